"""``bench run`` and the tables made from its records.

- :mod:`~benchmark.evaluation.runner`: one run: build the task's problem, evaluate every estimator, ask the ground
  truth for the points the selections score, write one record per estimator and selection;
- :mod:`~benchmark.evaluation.estimation`: one estimator on the problem: its hyperparameters, its timed and checked
  influence scores, its iHVP residual and parameter-change diagnostic;
- :mod:`~benchmark.evaluation.selections`: the test point, and the training points each selection scores;
- :mod:`~benchmark.evaluation.scoring`: agreement between estimated and re-trained effects (correlations, bootstrap
  intervals, the noise ceiling);
- :mod:`~benchmark.evaluation.recording`: what a run records: diagnostics, the ground truth's summary, the scores;
- :mod:`~benchmark.evaluation.leaderboard`: a task's leaderboard, rendered from its records;
- :mod:`~benchmark.evaluation.timing`: the paper's Table 2, rendered from the asv suite's result files
  (:mod:`~benchmark.evaluation.asv_results`).
"""
