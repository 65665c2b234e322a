"""Leave-one-out ground truth: what re-training says each training point's influence is.

- :mod:`~benchmark.groundtruth.engine`: re-trains from the optimum without each point, against a reference re-trained
  on the full data, one cache entry per point;
- :mod:`~benchmark.groundtruth.executors`: where the re-training runs: this process, a process pool or Ray;
- :mod:`~benchmark.groundtruth.status`: what a cache holds of ground truth (``bench gt --status``).
"""
