"""The problem a task builds, and the maths on it.

- :mod:`~benchmark.numerics.problem`: :class:`~benchmark.Problem`, a functional model with its data and training
  objective, giving Hessian-vector products, per-example gradients and dense Hessians through ``torch.func``. It is
  the contract between a task (which builds it) and the estimators and the ground truth (which compute on it), and it
  lives here, not in :mod:`benchmark.contracts`, because every routine below takes one;
- :mod:`~benchmark.numerics.recipes` and :mod:`~benchmark.numerics.training`: the gradient-descent schedules and the
  batched training that makes optima and re-trains leave-one-out models;
- :mod:`~benchmark.numerics.curvature`: the dense Hessian and power iteration, references for the estimators;
- :mod:`~benchmark.numerics.data_convolution`: the data's convolutions in Hessian-vector products, without the
  gradient torch computes and throws away;
- :mod:`~benchmark.numerics.losses`: per-example losses for tasks.

It imports only :mod:`benchmark.common`.
"""
