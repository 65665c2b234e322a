"""``bench study`` and ``bench report``: the paper's figures and claims, from declared sweeps of runs.

- :mod:`~benchmark.studies.declaration`: a study's YAML declaration (its format) and where plugins ship them;
- :mod:`~benchmark.studies.run`: a study run point by point and seed by seed through the runner;
- :mod:`~benchmark.studies.tables`: the study's CSV tables, made from the runs' records;
- :mod:`~benchmark.studies.claims`: the paper's claims, decided by declared rules on those tables;
- :mod:`~benchmark.studies.figures`: one figure per declared panel;
- :mod:`~benchmark.studies.report`: one HTML page of claims, figures, leaderboards and timings.
"""
