"""``tracin``: TracInCP (Pruthi, Liu, Kale & Sundararajan, "Estimating Training Data Influence by Tracing Gradient
Descent", NeurIPS 2020), the learning-rate-weighted gradient similarity summed over checkpoints of the training run."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import Estimator, EstimatorFailed, Problem, hookimpl, non_negative, positive
from benchmark.numerics.projection import PROJECTIONS, projection_matrix


@dataclasses.dataclass
class TracInConfig:
    """Hyperparameters of :class:`TracIn`.

    Attributes:
        checkpoints: how many evenly spaced checkpoints of the run's SGD steps to sum over, the last at its end
            (:meth:`benchmark.Problem.trajectory`).
        projection_dim: 0 for exact gradient products; otherwise the dimension ``k`` both gradients are randomly
            projected to first (captum's ``TracInCPFastRandProj``, dattri's ``TracInAttributor`` with a projector):
            ``<R g_test, R g_i>`` with ``R`` a ``k x P`` matrix of entries ``+-1/sqrt(k)`` (or normal, ``projection``),
            an unbiased estimate of ``<g_test, g_i>`` that holds ``n * k`` numbers per checkpoint instead of
            recomputing ``n`` gradients per query. At ``k >= P`` nothing is projected.
        projection: ``rademacher`` or ``normal`` entries of ``R``
            (:func:`benchmark.numerics.projection.projection_matrix`, one matrix per checkpoint, drawn as ``traker``
            draws one per model).
        seed: the projection's seed.
    """

    checkpoints: int = 5
    projection_dim: int = 0
    projection: str = dataclasses.field(default="rademacher", metadata={"choices": PROJECTIONS})
    seed: int = 0

    def __post_init__(self) -> None:
        positive(checkpoints=self.checkpoints)
        non_negative(projection_dim=self.projection_dim, seed=self.seed)
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection={self.projection!r} is not one of {', '.join(PROJECTIONS)}")


class TracIn(Estimator):
    """TracInCP: ``(1/n) sum_t lr_t g_test(theta_t)^T g_i(theta_t)`` over checkpoints ``theta_t`` of the SGD run that
    trained the optimum, ``lr_t`` the learning rate there.

    **Sign.** TracIn scores a *proponent* (a training point whose gradient steps lowered the test loss) positive.
    Removing a proponent raises the test loss, which is this harness's positive influence, so the scores keep
    TracIn's sign; the ``1/n`` puts them on the scale of the other estimators (correlations ignore it).

    **Checkpoints** come from the problem's training run, replayed and cached with the optimum
    (:class:`~benchmark.numerics.trajectory.TrainingRun`). A phase that is not SGD (an L-BFGS polish after it) has no
    learning rate and no checkpoint, so on an optimum polished after SGD the last checkpoint is the end of SGD, not
    the optimum. A problem without a training run (pretrained weights) is a recorded failure. What replaying the run
    cost is reported as the ``models_s`` timing, apart from this estimator's own preparation.

    Cost: one test gradient and one forward-mode pass over the training set per checkpoint and query. With
    ``projection_dim`` ``k``: one pass of per-example gradients per checkpoint to prepare (their projections kept,
    ``n * k`` numbers each) and a ``k``-dimensional product per query. No iHVP.
    Diagnostics: the checkpoints' steps and learning rates.
    """

    name = "tracin"
    Config = TracInConfig
    no_ihvp = "gradient similarity summed over training checkpoints, no curvature"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        try:
            trajectory = problem.trajectory(self.config.checkpoints, self.progress)
        except (NotImplementedError, ValueError) as error:
            raise EstimatorFailed(f"tracin needs the training run's checkpoints: {error}") from error
        self._checkpoints = [
            dataclasses.replace(problem, params=problem.unflatten(theta.to(problem.theta)))
            for theta in trajectory.thetas
        ]
        self._lrs = trajectory.lrs
        self._projections: list[tuple[Tensor, Tensor]] = []
        k = self.config.projection_dim
        if 0 < k < problem.n_params:
            rows = problem.gradient_rows()
            for index, checkpoint in enumerate(self._checkpoints):
                matrix = projection_matrix(problem.n_params, k, self.config.seed, index, self.config.projection)
                matrix = matrix.to(problem.theta) / k**0.5
                projected = torch.empty(problem.n_train, k, dtype=problem.dtype, device=problem.device)
                for part, gradients in checkpoint.iter_train_gradients(rows):
                    projected[part] = gradients @ matrix
                self._projections.append((matrix, projected))
        self.models = {
            "kind": "trajectory",
            "count": len(trajectory.steps),
            "seconds": trajectory.seconds,
            "from_cache": trajectory.from_cache,
        }
        self.diagnostics = {"steps": trajectory.steps, "lrs": trajectory.lrs}

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        total = torch.zeros(len(test_indices), problem.n_train, dtype=problem.dtype, device=problem.device)
        for index, (checkpoint, lr) in enumerate(zip(self._checkpoints, self._lrs)):
            test = lr * checkpoint.test_gradients(test_indices)
            if self._projections:
                matrix, projected = self._projections[index]
                total += (test @ matrix) @ projected.T
            else:
                total += checkpoint.train_gradient_products(test)
        return total / problem.n_train


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [TracIn]
