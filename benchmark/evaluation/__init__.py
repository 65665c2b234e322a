"""``bench run`` and the tables made from its records.

- :mod:`~benchmark.evaluation.runner`: one run: build the task's problem, run every estimator, ask the ground truth
  for the points each selection scores, score, write one record per estimator and selection;
- :mod:`~benchmark.evaluation.scoring`: agreement between estimated and re-trained effects (correlations, bootstrap
  intervals, the noise ceiling);
- :mod:`~benchmark.evaluation.leaderboard`: a task's leaderboard, rendered from its records;
- :mod:`~benchmark.evaluation.timing`: the paper's Table 2, rendered from the asv suite's results.
"""
