"""What a plugin implements, and what it is given: a plugin imports all of it from ``benchmark``.

- :mod:`~benchmark.contracts.task`: a task builds a trained :class:`~benchmark.Problem` (:mod:`benchmark.numerics`)
  and states its evaluation protocol;
- :mod:`~benchmark.contracts.estimator`: an estimator gives the inverse-Hessian-vector product, hence influence;
- :mod:`~benchmark.contracts.hookspecs`: every hook, and :mod:`~benchmark.contracts.plugins`, how plugins are found;
- :mod:`~benchmark.contracts.run_config`: what a ``bench run`` is asked to do, as its hooks see it;
- :mod:`~benchmark.contracts.records`: the typed schema of the result records a run writes and hooks receive;
- :mod:`~benchmark.contracts.testing`: the conformance suite an estimator plugin runs.

It imports :mod:`benchmark.common` and :mod:`benchmark.numerics`, nothing of the stages that run the contracts.
"""
