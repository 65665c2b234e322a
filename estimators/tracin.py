"""``tracin``: TracInCP (Pruthi, Liu, Kale & Sundararajan, "Estimating Training Data Influence by Tracing Gradient
Descent", NeurIPS 2020), the learning-rate-weighted gradient similarity summed over checkpoints of the training run."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import Estimator, EstimatorFailed, Problem, hookimpl, positive


@dataclasses.dataclass
class TracInConfig:
    """Hyperparameters of :class:`TracIn`.

    Attributes:
        checkpoints: how many evenly spaced checkpoints of the run's SGD steps to sum over, the last at its end
            (:meth:`benchmark.Problem.trajectory`).
    """

    checkpoints: int = 5

    def __post_init__(self) -> None:
        positive(checkpoints=self.checkpoints)


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

    Cost: one test gradient and one forward-mode pass over the training set per checkpoint and query. No iHVP.
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
        for checkpoint, lr in zip(self._checkpoints, self._lrs):
            total += checkpoint.train_gradient_products(lr * checkpoint.test_gradients(test_indices))
        return total / problem.n_train


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [TracIn]
