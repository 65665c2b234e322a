"""``cg``: conjugate gradient on Hessian-vector products (or generalised Gauss-Newton-vector products): several
right-hand sides share one block Krylov space, and a randomized Nyström approximation of the Hessian can precondition
every solve on an optimum."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmark import LAYERS, Estimator, EstimatorFailed, Problem, ScopedEstimator, hookimpl, non_negative, positive
from benchmark.numerics.curvature import CURVATURES, curvature_products

BLOCK_BASIS_BYTES = 2**30
"""Memory of the block Krylov basis (and its products) after which a block solve restarts from its residual."""
STALL_BLOCKS = 8
"""A block solve stops once its worst relative residual has made no new low in this many iterations: it has reached
the floor that the precision of the Hessian-vector products sets (in float32 on LeNet it stalled near 1e-5 while
the requested 1e-6 would have run it to its iteration cap), where more iterations only cost time."""


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
        block: solve several right-hand sides in one block Krylov space (block CG: the Galerkin solution on the
            span of every right-hand side's Krylov vectors) instead of one CG each. Each iteration still costs one
            product per right-hand side, but each solution draws on all of them: on LeNet with 10 test points, half
            the iterations of independent CG for the same residual. One right-hand side is plain CG either way.
        start: the initial guess, ``zero`` or ``rhs`` (``t_0 = v``, what dattri's and pyDVL's CG start from, at
            one more product per right-hand side; for comparing iterates with theirs at equal iteration counts).
            From ``rhs`` the solver runs on the residual system ``(H + lambda I) d = v - (H + lambda I) v`` and
            returns ``v + d``; ``tol`` stays relative to ``||v||``.
        curvature: the matrix ``H`` stands for, in the solves and the sketch: ``hessian`` (:meth:`Problem.hvp`), or
            ``ggn``, the generalised Gauss-Newton matrix (:meth:`Problem.ggnvp`), positive semi-definite for
            cross-entropy and squared error, so ``GGN + lambda I`` is positive definite for any ``lambda > 0``.
        layers: ``all``, or ``last``: the curvature of the last module's parameters only, the iHVP zero on every other
            parameter (:class:`~benchmark.ScopedEstimator`).
        solve_dtype: the precision of the curvature products and the solve: ``problem`` (the problem's own) or
            ``float64`` (the solution is returned in the problem's precision). On a float32 problem, CG stops where
            float32 products' rounding stops it: at a damping near the Hessian's smallest eigenvalues that leaves a
            true residual of percents (LeNet without weight decay at damping 1e-5: 6%). float64 products cost more (on
            a CPU, float64 convolutions take slower fallbacks).
    """

    damping: float = 0.001
    tol: float = 1e-5
    max_iter: int = 1000
    preconditioner: str = dataclasses.field(default="none", metadata={"choices": ("none", "nystrom")})
    sketch_rank: int = 100
    sketch_size: int = 1000
    seed: int = 0
    block: bool = True
    start: str = dataclasses.field(default="zero", metadata={"choices": ("zero", "rhs")})
    curvature: str = dataclasses.field(default="hessian", metadata={"choices": CURVATURES})
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})
    solve_dtype: str = dataclasses.field(default="problem", metadata={"choices": ("problem", "float64")})

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
        return self.power(residuals, -1.0)

    def power(self, residuals: Tensor, exponent: float) -> Tensor:
        """``M^exponent r`` for each row ``r`` of ``residuals`` (``M`` acts as the identity off the sketch)."""
        r = residuals.to(torch.float64)
        coefficients = r @ self.basis
        floor = float(self.eigenvalues[-1]) + self.damping
        scale = ((self.eigenvalues + self.damping) / floor) ** exponent
        return (r + (coefficients * (scale - 1.0)) @ self.basis.T).to(residuals.dtype)


class ConjugateGradient(ScopedEstimator):
    """Solves ``(H + lambda I) t = v`` by (preconditioned) conjugate gradient; ``H v`` from :meth:`Problem.hvp`.

    With ``curvature: ggn``, ``H`` is the generalised Gauss-Newton matrix throughout, its products
    :meth:`Problem.ggnvp`.

    Cost: one full-data Hessian-vector product per iteration and right-hand side; at most ``P`` iterations in exact
    arithmetic (block CG: fewer, and it keeps its basis, at most :data:`BLOCK_BASIS_BYTES` before a restart); with
    ``preconditioner: nystrom``, ``sketch_rank`` products on ``sketch_size`` examples once per optimum (in
    :meth:`prepare`). Needs ``H + lambda I`` positive definite: a direction of non-positive curvature stops it with a
    failure naming the curvature found (raise ``damping``). Diagnostics: iterations, the final relative residual
    ``||v - (H + lambda I) t|| / ||v||`` (worst over right-hand sides), ``converged``, and for the Nyström
    preconditioner its rank (below ``sketch_rank`` when the sketched Hessian has directions of negative curvature,
    which are left out), its largest and smallest eigenvalues and the seconds its sketch took.
    """

    name = "cg"
    Config = CGConfig
    damping_field = "damping"

    def prepare_scope(self, problem: Problem) -> None:
        self._solver_problem = problem.to(dtype=torch.float64) if self.config.solve_dtype == "float64" else problem
        self._preconditioner: NystromPreconditioner | None = None
        self._sketch_diagnostics: dict[str, float | int] = {}
        if self.config.preconditioner == "nystrom":
            start = time.perf_counter()
            self._preconditioner = self._nystrom(problem)
            values = self._preconditioner.eigenvalues
            self._sketch_diagnostics = {
                "sketch_rank": len(values),
                "sketch_top_eigenvalue": float(values[0]),
                "sketch_bottom_eigenvalue": float(values[-1]),
                "sketch_seconds": time.perf_counter() - start,
            }
        self.diagnostics = dict(self._sketch_diagnostics)

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
        product = curvature_products(problem, c.curvature)
        products = torch.cat([product(columns[i : i + 16], indices) for i in range(0, rank, 16)])
        return NystromPreconditioner(products.T.cpu(), test_matrix, c.damping)

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        problem = self._solver_problem
        if self.config.solve_dtype == "float64" and vectors.dtype != torch.float64:
            return self.scope_ihvp(vectors.to(torch.float64)).to(vectors.dtype)
        damping = self.config.damping
        product = curvature_products(problem, self.config.curvature)

        def apply(x: Tensor) -> Tensor:
            return product(x) + damping * x

        tol = max(self.config.tol, 10 * torch.finfo(vectors.dtype).eps)
        relative = None
        norms = torch.linalg.vector_norm(vectors.to(torch.float64), dim=1).clamp_min(1e-300)
        start = vectors if self.config.start == "rhs" else None
        system = vectors if start is None else vectors - apply(start)
        if self.config.block and len(vectors) > 1:
            solution, iterations, stalled, relative = self._block_solve(apply, system, norms)
            if stalled or bool((relative <= tol).all()):
                relative = None  # at the precision floor the basis's residual is below the true one: check it
        else:
            (solution, iterations), stalled = self._solve(apply, system, norms), None
        if start is not None:
            solution = start + solution
        if relative is None:  # one more product each; in float32 CG's recurrence goes on below the true residual
            relative = torch.linalg.vector_norm(vectors - apply(solution), dim=1) / norms
        if not bool(torch.isfinite(solution).all()):
            raise EstimatorFailed(f"CG produced non-finite values after {iterations} iterations")
        self.diagnostics = {
            **self._sketch_diagnostics,
            **({} if stalled is None else {"stalled": stalled}),
            "iterations": iterations,
            "relative_residual": float(relative.max()),
            "converged": bool((relative <= tol).all()),
        }
        return solution

    def _solve(self, apply: Callable[[Tensor], Tensor], vectors: Tensor, norms: Tensor) -> tuple[Tensor, int]:
        """Independent preconditioned CG for each row of ``vectors`` (batched), each until its residual is ``tol``
        times its row of ``norms``; the solutions and iterations."""
        precondition = self._preconditioner or (lambda r: r)

        def row_dot(a: Tensor, b: Tensor) -> Tensor:
            return (a * b).sum(dim=1)

        solution = torch.zeros_like(vectors)
        residual = vectors.clone()
        preconditioned = precondition(residual)
        direction = preconditioned.clone()
        squared = row_dot(residual, residual)
        inner = row_dot(residual, preconditioned)
        target = (self.config.tol * norms) ** 2
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
                raise self._not_positive_definite(worst, iterations)
            alpha = torch.where(active, inner / curvature, torch.zeros_like(inner))
            solution += alpha[:, None] * direction
            residual -= alpha[:, None] * product
            squared = row_dot(residual, residual)
            preconditioned = precondition(residual)
            new_inner = row_dot(residual, preconditioned)
            beta = torch.where(active, new_inner / inner, torch.zeros_like(inner))
            direction = preconditioned + beta[:, None] * direction
            inner = new_inner
        return solution, iterations

    def _block_solve(
        self, apply: Callable[[Tensor], Tensor], vectors: Tensor, norms: Tensor
    ) -> tuple[Tensor, int, bool, Tensor]:
        """Block CG as a Galerkin method: build an orthonormal basis ``Q`` of the block Krylov space of the residuals
        (block Lanczos with full re-orthogonalisation; directions that became dependent are dropped), and take
        ``t = Q (Q^T A Q)^-1 Q^T v`` on it, which is what block CG computes in exact arithmetic. With a preconditioner
        ``M`` it runs on the symmetric system ``M^-1/2 A M^-1/2``. Restarts from the current residual when the basis
        outgrows :data:`BLOCK_BASIS_BYTES`; stops early at the precision floor (:data:`STALL_BLOCKS`). Returns the
        solutions, the iterations, whether it stopped there, and the relative residuals ``||v - A t|| / norms`` as the
        products of the basis give them (``A t = (A Q) y``): at no further product, and equal to the true ones while
        they are far above the rounding of the products. Near that floor they fall below the truth (float32 LeNet:
        1.2e-5 where a further product gives 3.3e-5), so :meth:`ihvp` checks a claimed convergence or stall with one
        more product per right-hand side. The small matrices are float64."""
        preconditioner = self._preconditioner
        dtype = vectors.dtype

        def root(x: Tensor, exponent: float) -> Tensor:  # M^exponent, in float64
            x = x.to(torch.float64)
            return x if preconditioner is None else preconditioner.power(x, exponent)

        def operator(x: Tensor) -> Tensor:  # M^-1/2 A M^-1/2
            return root(apply(root(x, -0.5).to(dtype)), -0.5)

        solution = torch.zeros_like(vectors, dtype=torch.float64)  # of the transformed system
        residual = root(vectors, -0.5)
        max_blocks = max(1, BLOCK_BASIS_BYTES // (2 * 8 * vectors.numel()))
        iterations, history = 0, []
        relative = torch.zeros(len(vectors), dtype=torch.float64)
        while iterations < self.config.max_iter:
            start, bases, products = residual, [], []
            block = _orthonormal_rows(start)
            if not len(block):  # every residual is zero
                break
            while len(block) and iterations < self.config.max_iter and len(bases) < max_blocks:
                iterations += 1
                bases.append(block)
                products.append(operator(block))
                basis, product = torch.cat(bases), torch.cat(products)
                projected = basis @ product.T
                projected = (projected + projected.T) / 2
                smallest = float(torch.linalg.eigvalsh(projected)[0])
                if smallest <= 0:
                    raise self._not_positive_definite(smallest, iterations)
                coefficients = torch.linalg.solve(projected, basis @ start.T)
                residual = start - (product.T @ coefficients).T
                relative = torch.linalg.vector_norm(root(residual, 0.5), dim=1) / norms
                history.append(float(relative.max()))
                stalled = len(history) > STALL_BLOCKS and min(history[-STALL_BLOCKS:]) >= min(history[:-STALL_BLOCKS])
                if bool((relative <= self.config.tol).all()) or stalled:
                    return root(solution + (basis.T @ coefficients).T, -0.5).to(dtype), iterations, stalled, relative
                block = products[-1]
                for _ in range(2):  # twice is enough (Giraud et al. 2005)
                    block = block - (block @ basis.T) @ basis
                block = _orthonormal_rows(block)
            solution = solution + (basis.T @ coefficients).T
            if not len(block):  # the Krylov space is exhausted: the Galerkin solution is exact
                break
        return root(solution, -0.5).to(dtype), iterations, False, relative

    @staticmethod
    def _not_positive_definite(curvature: float, iterations: int) -> EstimatorFailed:
        return EstimatorFailed(
            f"H + damping I is not positive definite (curvature {curvature:.3g} along a CG direction at "
            f"iteration {iterations}); raise cg.damping"
        )


def _orthonormal_rows(rows: Tensor, rtol: float = 1e-10) -> Tensor:
    """An orthonormal basis (as rows) of the span of ``rows``, without directions below ``rtol`` of the largest."""
    u, singular, _ = torch.linalg.svd(rows.T, full_matrices=False)
    if not len(singular) or float(singular[0]) == 0.0:
        return rows[:0]
    return u[:, singular > rtol * singular[0]].T


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [ConjugateGradient]
