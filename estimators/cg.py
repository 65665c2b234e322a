"""``cg``: conjugate gradient on Hessian-vector products, one independent CG per right-hand side, all batched,
optionally preconditioned by a randomized Nyström approximation of the Hessian shared by every right-hand side."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import Tensor

from benchmark import Estimator, EstimatorFailed, hookimpl
from benchmark.config import non_negative, positive
from benchmark.problem import Problem


@dataclasses.dataclass
class CGConfig:
    """Hyperparameters of :class:`ConjugateGradient`.

    Attributes:
        damping: ``lambda`` in ``(H + lambda I)^-1``.
        tol: stop when ``||v - (H + lambda I) t|| <= tol * ||v||`` for every right-hand side ("time to accuracy":
            raise it for a faster, looser answer). The default is reachable in float32 as well as float64.
        max_iter: iteration cap.
        preconditioner: ``none``, or ``nystrom``: the randomized Nyström preconditioner of Frangella, Tropp & Udell
            (SIAM J. Matrix Anal. Appl. 2023) built in :meth:`~ConjugateGradient.prepare` from ``sketch_rank``
            Hessian-vector products and shared by every later solve on the same optimum. It removes the top of the
            spectrum, which is what makes plain CG slow on networks (condition numbers of thousands at damping 0.01).
        sketch_rank: ``l``, the rank of the Nyström approximation.
        sketch_size: training examples (sampled once) whose Hessian is sketched; 0 sketches the full-data Hessian.
            A preconditioner only has to be close to ``H``, not equal: a subsample makes the sketch ``n /
            sketch_size`` times cheaper, and CG still solves the full system exactly.
        seed: seed of the sketch's test matrix and subsample.
    """

    damping: float = 0.001
    tol: float = 1e-5
    max_iter: int = 1000
    preconditioner: str = dataclasses.field(default="none", metadata={"choices": ("none", "nystrom")})
    sketch_rank: int = 100
    sketch_size: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        non_negative(damping=self.damping, sketch_size=self.sketch_size)
        positive(tol=self.tol, max_iter=self.max_iter, sketch_rank=self.sketch_rank)


class NystromPreconditioner:
    """``M^-1 = (e_l + lambda) U (E + lambda I)^-1 U^T + (I - U U^T)`` from a rank-``l`` Nyström approximation
    ``U E U^T`` of a Hessian (Frangella, Tropp & Udell 2023, algorithms 2.1 and 5.1), in float64.

    ``M^-1`` is symmetric positive definite for any sketch (``E >= 0``), so preconditioned CG converges to the
    exact solution of ``(H + lambda I) t = v`` however rough the sketch; the sketch decides only how fast.
    """

    def __init__(self, products: Tensor, test_matrix: Tensor, damping: float):
        """``products = H @ test_matrix`` for an orthonormal ``test_matrix: Tensor[P, l]``."""
        omega, y = test_matrix.to(torch.float64), products.to(torch.float64)
        shift = y.shape[0] ** 0.5 * torch.finfo(torch.float64).eps * float(torch.linalg.matrix_norm(y, ord=2))
        y = y + shift * omega
        core = omega.T @ y
        cholesky, info = torch.linalg.cholesky_ex((core + core.T) / 2)
        if int(info) != 0:  # an indefinite H (a saddle) on the sketched subspace: keep its positive part
            values, vectors = torch.linalg.eigh((core + core.T) / 2)
            keep = values > shift
            b = y @ (vectors[:, keep] / values[keep].sqrt())
        else:
            b = torch.linalg.solve_triangular(cholesky, y.T, upper=False).T
        u, singular, _ = torch.linalg.svd(b, full_matrices=False)
        self.basis = u
        self.eigenvalues = (singular**2 - shift).clamp_min(0.0)
        self.damping = damping

    def __call__(self, residuals: Tensor) -> Tensor:
        """``M^-1 r`` for each row ``r`` of ``residuals``."""
        r = residuals.to(torch.float64)
        coefficients = r @ self.basis
        floor = float(self.eigenvalues[-1]) + self.damping
        inside = (coefficients * (floor / (self.eigenvalues + self.damping))) @ self.basis.T
        outside = r - coefficients @ self.basis.T
        return (inside + outside).to(residuals.dtype)


class ConjugateGradient(Estimator):
    """Solves ``(H + lambda I) t = v`` by (preconditioned) conjugate gradient; ``H v`` from :meth:`Problem.hvp`.

    Cost: one full-data Hessian-vector product per iteration and right-hand side (vectorised over right-hand sides);
    at most ``P`` iterations in exact arithmetic; with ``preconditioner: nystrom``, ``sketch_rank`` products on
    ``sketch_size`` examples once per optimum (in :meth:`prepare`). Needs ``H + lambda I`` positive definite: a
    direction of non-positive curvature stops it with a failure naming the curvature found (raise ``damping``).
    Diagnostics: iterations, the final relative residual (worst over right-hand sides), ``converged``, and for the
    Nyström preconditioner its rank (below ``sketch_rank`` when the sketched Hessian has directions of negative
    curvature, which are left out), its largest and smallest eigenvalues and the seconds its sketch took.
    """

    name = "cg"
    Config = CGConfig

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        self._preconditioner: NystromPreconditioner | None = None
        self.diagnostics = {}
        if self.config.preconditioner == "nystrom":
            start = time.perf_counter()
            self._preconditioner = self._nystrom(problem)
            values = self._preconditioner.eigenvalues
            self.diagnostics = {
                "sketch_rank": len(values), "sketch_top_eigenvalue": float(values[0]),
                "sketch_bottom_eigenvalue": float(values[-1]), "sketch_seconds": time.perf_counter() - start,
            }

    def _nystrom(self, problem: Problem) -> NystromPreconditioner:
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        rank = min(c.sketch_rank, problem.n_params)
        gaussian = torch.randn(problem.n_params, rank, generator=generator, dtype=torch.float64)
        test_matrix = torch.linalg.qr(gaussian).Q
        indices = None
        if 0 < c.sketch_size < problem.n_train:
            indices = torch.randperm(problem.n_train, generator=generator)[: c.sketch_size].to(problem.device)
        columns = test_matrix.T.to(problem.dtype).to(problem.device)
        products = torch.cat([problem.hvp(columns[i : i + 16], indices) for i in range(0, rank, 16)])
        return NystromPreconditioner(products.T.cpu(), test_matrix, c.damping)

    def ihvp(self, vectors: Tensor) -> Tensor:
        problem = self._require_problem()
        damping, tol = self.config.damping, self.config.tol
        precondition = self._preconditioner or (lambda r: r)

        def apply(x: Tensor) -> Tensor:
            return problem.hvp(x) + damping * x

        def row_dot(a: Tensor, b: Tensor) -> Tensor:
            return (a * b).sum(dim=1)

        solution = torch.zeros_like(vectors)
        residual = vectors.clone()
        preconditioned = precondition(residual)
        direction = preconditioned.clone()
        squared = row_dot(residual, residual)
        inner = row_dot(residual, preconditioned)
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
            alpha = torch.where(active, inner / curvature, torch.zeros_like(inner))
            solution += alpha[:, None] * direction
            residual -= alpha[:, None] * product
            squared = row_dot(residual, residual)
            preconditioned = precondition(residual)
            new_inner = row_dot(residual, preconditioned)
            beta = torch.where(active, new_inner / inner, torch.zeros_like(inner))
            direction = preconditioned + beta[:, None] * direction
            inner = new_inner
        true_residual = torch.linalg.vector_norm(vectors - apply(solution), dim=1)
        relative = true_residual / torch.linalg.vector_norm(vectors, dim=1).clamp_min(1e-300)
        if not bool(torch.isfinite(solution).all()):
            raise EstimatorFailed(f"CG produced non-finite values after {iterations} iterations")
        self.diagnostics = {
            **{k: v for k, v in self.diagnostics.items() if k.startswith("sketch")},
            "iterations": iterations,
            "relative_residual": float(relative.max()),
            "converged": bool((relative <= max(tol, 10 * torch.finfo(vectors.dtype).eps)).all()),
        }
        return solution


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [ConjugateGradient]
