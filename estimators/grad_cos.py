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
    correlations are comparable with the other estimators. A zero gradient scores 0.

    Cost: one pass over the per-example training gradients to prepare (their norms), one forward-mode pass per query.
    No iHVP.
    """

    name = "grad-cos"
    no_ihvp = "gradient similarity, no curvature"

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        norms = torch.empty(problem.n_train, dtype=problem.dtype, device=problem.device)
        for rows, gradients in problem.iter_train_gradients():
            norms[rows] = torch.linalg.vector_norm(gradients, dim=1)
        self._train_norms = norms

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        problem = self._require_problem()
        test = problem.test_gradients(test_indices)
        test = test / torch.linalg.vector_norm(test, dim=1, keepdim=True).clamp_min(torch.finfo(test.dtype).tiny)
        products = problem.train_gradient_products(test)
        return products / self._train_norms.clamp_min(torch.finfo(test.dtype).tiny)


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [GradientCosine]
