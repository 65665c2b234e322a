"""Training recipes: the gradient-descent schedule that trains an optimum and re-trains leave-one-out models
(:class:`Recipe`), and the final phase that takes an optimum to a stationary point (:class:`Polish`).

Plain data, read by :mod:`benchmark.numerics.training` (which runs them) and :mod:`benchmark.contracts.task` (a task's
protocol names its re-training recipe). A task imports both from ``benchmark``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A gradient-descent recipe, used both to train an optimum and to re-train leave-one-out models from it.

    Attributes:
        steps: number of parameter updates.
        lr: learning rate.
        batch_size: minibatch size; ``None`` for full-batch gradient descent.
        momentum: heavy-ball momentum, as in ``torch.optim.SGD``.
        seed: seed of the minibatch order; leave-one-out models share it (common random numbers).
    """

    steps: int
    lr: float
    batch_size: int | None = None
    momentum: float = 0.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Polish:
    """A final training phase that takes an optimum to a stationary point: full-batch L-BFGS (strong-Wolfe line
    search) on the whole training objective (:func:`benchmark.numerics.training.polish`), stopped once its gradient norm
    is at most ``gradient_tol``.

    Minibatch SGD at any constant rate stops where its noise balances the gradient, far from a stationary point;
    influence functions assume one.

    Attributes:
        max_steps: the most L-BFGS iterations (each one or a few full-data gradients).
        gradient_tol: stop once ``||grad J(theta)||`` is at most this.
        history: L-BFGS memory (pairs of steps and gradient changes kept).
    """

    max_steps: int
    gradient_tol: float = 1e-5
    history: int = 20
