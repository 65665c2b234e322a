"""The asv timing suite: the paper's Table 2 (time to compute influence for one test point) for every registered
estimator, with accuracy tracked beside runtime.

asv imports this folder as the top-level package ``asv_bench`` (named so that it shadows none of the packages it
imports). :mod:`asv_bench.cases` says what runs (cases, sizes, estimators, environment variables);
:mod:`asv_bench.influence` holds the benchmarks. See ``docs/timing.md``.
"""
