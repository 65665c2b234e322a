"""``grad-cos``: the cosine of the test and the training gradients at the optimum, the normalised first-order score
(the gradient-cosine baseline of Barshan, Brunet & Dziugaite, "RelatIF", AISTATS 2020, and of later benchmarks)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark import Estimator, Problem, hookimpl


class GradientCosine(Estimator):
    """``g_test^T g_i / (||g_test|| ||g_i||)``: ``first-order``'s score with each gradient normalised, so that
    training points with large gradients (outliers, mislabelled points) do not rank first by their norm alone.

    **Sign.** As ``first-order``: a training gradient aligned with the test gradient is a point whose removal raises
    the test loss, positive here. The scores are cosines in [-1, 1], not a predicted loss change; only their order and
    correlations are comparable with the other estimators.

    **Vanishing gradients.** Products and norms come from the same per-example gradients, so every score is a cosine.
    A training gradient whose norm is at most ``eps`` (the dtype's) times the largest one is rounding noise, whose
    direction means nothing: it scores 0. Without that, a well-fit network's many vanishing gradients (float32
    softmax saturates) would fill the top of the ranking with points whose removal changes nothing.

    Cost: one pass over the per-example training gradients to prepare (their norms) and one per query, in chunks of
    :meth:`benchmark.Problem.gradient_rows`. No iHVP.
    """

    name = "grad-cos"
    no_ihvp = "gradient similarity, no curvature"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        norms = torch.empty(problem.n_train, dtype=problem.dtype, device=problem.device)
        for rows, gradients in problem.iter_train_gradients(problem.gradient_rows()):
            norms[rows] = torch.linalg.vector_norm(gradients, dim=1)
        floor = torch.finfo(problem.dtype).eps * float(norms.max())
        self._inverse_norms = torch.where(norms > floor, 1 / norms.clamp_min(torch.finfo(problem.dtype).tiny), 0.0)
        self.diagnostics = {"vanishing_gradients": int((norms <= floor).sum())}

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        test = problem.test_gradients(test_indices)
        test = test / torch.linalg.vector_norm(test, dim=1, keepdim=True).clamp_min(torch.finfo(test.dtype).tiny)
        out = torch.empty(len(test), problem.n_train, dtype=problem.dtype, device=problem.device)
        for rows, gradients in problem.iter_train_gradients(problem.gradient_rows()):
            out[:, rows] = test @ gradients.T
        return out * self._inverse_norms


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [GradientCosine]
