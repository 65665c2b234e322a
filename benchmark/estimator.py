"""The estimator contract.

An estimator implements one thing, the inverse-Hessian-vector product (iHVP). The influence of every training point
on a test point is written once, here, from that iHVP; first-order estimators may override :meth:`influence`.

Sign convention (pinned by tests): :meth:`Estimator.influence` returns the predicted **change in the test loss when
the training point is removed**, ``+(1/n) g_test^T H^-1 g_i``, the same quantity the leave-one-out ground truth
measures (``loss_test(theta_-i) - loss_test(theta_ref)``), so that a good estimator correlates positively.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from benchmark.problem import Problem


@dataclasses.dataclass
class NoConfig:
    """Hyperparameters of an estimator that has none."""


class Estimator(abc.ABC):
    """Base class of every influence estimator.

    Subclasses set :attr:`name` (the short name used on the command line), :attr:`Config` (a dataclass of
    hyperparameters with defaults; ``bench run --set NAME.FIELD=VALUE`` sets them) and implement :meth:`ihvp`.

    ``progress`` asks a long-running estimator to show a progress bar; ``diagnostics`` holds what the last call
    measured of its own convergence (iterations, residuals, spectrum), copied into the result record.

    Lifecycle: ``prepare(problem)`` once per trained model (the expensive, cacheable part, timed as *preparation*),
    then any number of ``influence(test_indices)`` queries (timed as *query*).
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: Any | None = None, progress: bool = False):
        self.config = self.Config() if config is None else config
        self.progress = progress
        self.diagnostics: dict[str, Any] = {}
        self.problem: Problem | None = None

    @property
    def damping(self) -> float:
        """The damping ``lambda`` this estimator adds to ``H`` (0 if it has none): its iHVP targets ``(H + lambda I)^-1``."""
        return float(getattr(self.config, "damping", 0.0))

    def prepare(self, problem: Problem) -> None:
        """Do the expensive, query-independent work for ``problem`` (default: remember it)."""
        self.problem = problem

    @abc.abstractmethod
    def ihvp(self, vectors: Tensor) -> Tensor:
        """Inverse-Hessian-vector products.

        Args:
            vectors: ``Tensor[m, P]``, one right-hand side ``v`` per row, in the problem's dtype.

        Returns:
            ``Tensor[m, P]``: the estimator's approximation of ``(H + damping I)^-1 v`` per row.

        Raises:
            EstimatorFailed: when no trustworthy answer can be produced (divergence, singular system).
        """

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        """Predicted change of each test loss when each training point is removed.

        Returns:
            ``Tensor[m, n]``: row ``j``, column ``i`` is ``(1/n) g_test_j^T H^-1 g_i``.
        """
        problem = self._require_problem()
        return self.influence_from_solutions(self.ihvp(problem.test_gradients(test_indices)))

    def influence_from_solutions(self, solutions: Tensor) -> Tensor:
        """``(1/n) G_train s`` for each row ``s`` of ``solutions`` (``Tensor[m, P]`` of ``H^-1 g_test``): ``Tensor[m, n]``."""
        problem = self._require_problem()
        return problem.train_gradient_products(solutions) / problem.n_train

    def parameter_change(self, train_indices: Tensor | list[int]) -> Tensor:
        """Predicted parameter change ``theta_-i - theta*`` on removing each training point, ``(1/n) H^-1 g_i``.

        Returns:
            ``Tensor[k, P]``.
        """
        problem = self._require_problem()
        return self.ihvp(problem.train_gradients(train_indices)) / problem.n_train

    def _require_problem(self) -> Problem:
        if self.problem is None:
            raise RuntimeError(f"estimator {self.name!r} used before prepare()")
        return self.problem


def check_finite(name: str, tensor: Tensor) -> Tensor:
    """Raise :class:`~benchmark.errors.EstimatorFailed` naming ``name`` unless every entry is finite."""
    from benchmark.errors import EstimatorFailed

    if not bool(torch.isfinite(tensor).all()):
        raise EstimatorFailed(f"{name} produced non-finite values")
    return tensor
