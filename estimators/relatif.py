"""``relatif``: RelatIF (Barshan, Brunet & Dziugaite, "RelatIF: Identifying Explanatory Training Examples via Relative
Influence", AISTATS 2020), exact influence divided by the size of the parameter change removing the point would
cause, so that points which move the model a lot (outliers, mislabelled points) do not rank first for every test
point alike."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark import Estimator, Problem, hookimpl
from estimators.exact import Exact


class RelatIF(Exact):
    """``g_test^T (H + lambda I)^-1 g_i / ||(H + lambda I)^-1 g_i||`` on ``exact``'s dense decomposition (the
    paper's theta-relative influence, with the damping of the iHVP it uses; its ``l``-relative variant is not built).

    **Sign.** The numerator is ``exact``'s influence times ``n`` and the denominator is positive, so the signs are
    ``exact``'s; the scores are not a predicted loss change (their scale is that of a gradient norm), so only their
    order and correlations compare with the other estimators. Its iHVP, residual and parameter change are ``exact``'s.

    Everything else (hyperparameters, ``max_params``, ``layers``, the cached Hessian) is :class:`Exact`'s. Cost on top
    of it: one pass over the per-example training gradients to prepare, solving for each (two products with the
    ``P x P`` eigenvector matrix per example). A training point whose gradient vanishes scores 0.
    """

    name = "relatif"

    def prepare_scope(self, problem: Problem) -> None:
        super().prepare_scope(problem)
        norms = torch.empty(problem.n_train, dtype=torch.float64)
        for rows, gradients in problem.iter_train_gradients(256):
            solutions = self._hessian.solve(gradients, self.config.damping)
            norms[rows] = torch.linalg.vector_norm(solutions, dim=1).cpu()
        self._change_norms = norms

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        scope = self.scope
        solutions = self.scope_ihvp(scope.test_gradients(test_indices))
        products = scope.train_gradient_products(solutions).to(torch.float64)
        scores = products / self._change_norms.to(products.device).clamp_min(torch.finfo(torch.float64).tiny)
        return scores.to(scope.dtype)


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [RelatIF]
