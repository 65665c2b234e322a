"""``cg``: conjugate gradient on Hessian-vector products, one independent CG per right-hand side, all batched."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import Estimator, EstimatorFailed, hookimpl
from benchmark.config import non_negative, positive


@dataclasses.dataclass
class CGConfig:
    """Hyperparameters of :class:`ConjugateGradient`.

    Attributes:
        damping: ``lambda`` in ``(H + lambda I)^-1``.
        tol: stop when ``||v - (H + lambda I) t|| <= tol * ||v||`` for every right-hand side ("time to accuracy":
            raise it for a faster, looser answer). The default is reachable in float32 as well as float64.
        max_iter: iteration cap.
    """

    damping: float = 0.001
    tol: float = 1e-5
    max_iter: int = 1000

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(tol=self.tol, max_iter=self.max_iter)


class ConjugateGradient(Estimator):
    """Solves ``(H + lambda I) t = v`` by conjugate gradient; ``H v`` forward-over-reverse (``jvp`` of ``grad``).

    Cost: one full-data Hessian-vector product per iteration and right-hand side (vectorised over right-hand sides);
    at most ``P`` iterations in exact arithmetic. Needs ``H + lambda I`` positive definite: a direction of
    non-positive curvature stops it with a failure naming the curvature found (raise ``damping``). Diagnostics:
    iterations and the final relative residual (worst over right-hand sides).
    """

    name = "cg"
    Config = CGConfig

    def ihvp(self, vectors: Tensor) -> Tensor:
        problem = self._require_problem()
        damping, tol = self.config.damping, self.config.tol

        def apply(x: Tensor) -> Tensor:
            return problem.hvp(x) + damping * x

        def row_dot(a: Tensor, b: Tensor) -> Tensor:
            return (a * b).sum(dim=1)

        solution = torch.zeros_like(vectors)
        residual = vectors.clone()
        direction = residual.clone()
        squared = row_dot(residual, residual)
        target = tol**2 * squared
        iterations = 0
        while iterations < self.config.max_iter:
            active = squared > target
            if not bool(active.any()):
                break
            iterations += 1
            product = apply(direction)
            curvature = row_dot(direction, product)
            if bool((curvature[active] <= 0).any()):
                worst = float((curvature / row_dot(direction, direction).clamp_min(1e-300))[active].min())
                raise EstimatorFailed(
                    f"H + damping I is not positive definite (curvature {worst:.3g} along a CG direction at "
                    f"iteration {iterations}); raise cg.damping"
                )
            alpha = torch.where(active, squared / curvature, torch.zeros_like(squared))
            solution += alpha[:, None] * direction
            residual -= alpha[:, None] * product
            new_squared = row_dot(residual, residual)
            beta = torch.where(active, new_squared / squared, torch.zeros_like(squared))
            direction = residual + beta[:, None] * direction
            squared = new_squared
        true_residual = torch.linalg.vector_norm(vectors - apply(solution), dim=1)
        relative = true_residual / torch.linalg.vector_norm(vectors, dim=1).clamp_min(1e-300)
        if not bool(torch.isfinite(solution).all()):
            raise EstimatorFailed(f"CG produced non-finite values after {iterations} iterations")
        self.diagnostics = {
            "iterations": iterations,
            "relative_residual": float(relative.max()),
            "converged": bool((relative <= max(tol, 10 * torch.finfo(vectors.dtype).eps)).all()),
        }
        return solution


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [ConjugateGradient]
