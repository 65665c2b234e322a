"""``arnoldi``: the top eigenpairs of the Hessian (or GGN) by Arnoldi iteration, distilled once per optimum; the iHVP
in their span (Schioppa, Zablotskaia, Vilar & Sokolov, "Scaling Up Influence Functions", AAAI 2022)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import LAYERS, Estimator, EstimatorFailed, Problem, ScopedEstimator, hookimpl, non_negative, positive
from benchmark.numerics.curvature import CURVATURES, curvature_products


@dataclasses.dataclass
class ArnoldiConfig:
    """Hyperparameters of :class:`Arnoldi`.

    Attributes:
        rank: ``p``, the eigenpairs kept (the largest in magnitude of the Ritz values); at most ``iterations``.
        iterations: ``n``, Arnoldi steps, one curvature-vector product each (capped at the parameter count ``P``).
        damping: ``lambda`` in ``(H + lambda I)^-1``, applied to the kept eigenvalues.
        seed: seed of the random start vector (and of any restart after an invariant subspace is found).
        curvature: ``hessian`` (:meth:`Problem.hvp`) or ``ggn``, the generalised Gauss-Newton matrix
            (:meth:`Problem.ggnvp`).
        layers: ``all``, or ``last``: the curvature of the last module's parameters only, the iHVP zero on every other
            parameter (:class:`~benchmark.ScopedEstimator`).
    """

    rank: int = 50
    iterations: int = 100
    damping: float = 0.001
    seed: int = 0
    curvature: str = dataclasses.field(default="hessian", metadata={"choices": CURVATURES})
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})

    def __post_init__(self) -> None:
        positive(rank=self.rank, iterations=self.iterations)
        non_negative(damping=self.damping)
        if self.rank > self.iterations:
            raise ValueError(f"rank={self.rank} exceeds iterations={self.iterations}: at most one eigenpair per step")


class Arnoldi(ScopedEstimator):
    """iHVP in the span of the top-``p`` eigenvectors of ``H``, found by Arnoldi iteration (Schioppa et al. 2022).

    :meth:`prepare` runs ``n`` steps of Arnoldi iteration on curvature-vector products from a seeded random unit
    vector, re-orthogonalising every new vector against all earlier ones (twice), which for a symmetric ``H`` is
    Lanczos without its loss of orthogonality; when the Krylov space closes (an invariant subspace: the new vector
    vanishes), it goes on from a fresh random vector orthogonal to the basis, so ``n = P`` steps span the whole space.
    The eigenpairs of the projected matrix ``Q^T H Q`` (symmetrised, float64) give Ritz pairs ``(e_k, u_k)``; the ``p``
    of largest ``|e_k|`` are kept, once per optimum, and every query reuses them.

    The iHVP is ``U (E + lambda I)^-1 U^T v``: exact on the kept subspace; **the component of ``v`` orthogonal to it is
    dropped** (mapped to zero), as in Schioppa et al., who project the gradients onto the top eigenvectors. It is not
    replaced by ``v / lambda`` or anything else, so at ``p < P`` this is a low-rank approximation of
    ``(H + lambda I)^-1``, and at ``p = n = P`` it is the exact inverse.

    Cost: ``n`` products and a basis of ``n x P`` values to prepare, ``p x P`` kept; each query two products with the
    ``P x p`` eigenvector matrix. Fails when a kept ``e_k + lambda`` is zero (singular). Diagnostics: the kept
    eigenvalues (without damping, largest first), how many of them are non-positive (``H`` is indefinite off an exact
    minimum; such directions are kept, damped, like the positive ones), the steps run and the restarts.
    """

    name = "arnoldi"
    Config = ArnoldiConfig
    damping_field = "damping"

    def prepare_scope(self, problem: Problem) -> None:
        c = self.config
        product = curvature_products(problem, c.curvature)
        steps = min(c.iterations, problem.n_params)
        generator = torch.Generator().manual_seed(c.seed)

        def random_unit(basis: Tensor) -> Tensor:
            vector = torch.randn(problem.n_params, generator=generator, dtype=torch.float64)
            vector = vector.to(problem.dtype).to(problem.device)
            for _ in range(2):
                vector = vector - basis.T @ (basis @ vector)
            return vector / torch.linalg.vector_norm(vector)

        basis = torch.empty(steps, problem.n_params, dtype=problem.dtype, device=problem.device)
        projected = torch.zeros(steps, steps, dtype=torch.float64)
        basis[0] = random_unit(basis[:0])
        restarts, scale = 0, 0.0
        for k in range(steps):
            vector = product(basis[k : k + 1])[0]
            scale = max(scale, float(torch.linalg.vector_norm(vector)))  # about ||H||: what rounding is relative to
            coefficients = torch.zeros(k + 1, dtype=torch.float64)
            for _ in range(2):  # twice is enough (Giraud et al. 2005)
                overlap = basis[: k + 1] @ vector
                vector = vector - basis[: k + 1].T @ overlap
                coefficients += overlap.to(torch.float64).cpu()
            projected[: k + 1, k] = coefficients
            if k + 1 == steps:
                break
            norm = float(torch.linalg.vector_norm(vector))
            if norm <= 1e3 * torch.finfo(problem.dtype).eps * scale:  # an invariant subspace (or H = 0): restart
                basis[k + 1] = random_unit(basis[: k + 1])
                restarts += 1
            else:
                projected[k + 1, k] = norm
                basis[k + 1] = vector / norm
        # H is symmetric, so the Hessenberg matrix Q^T H Q is too up to rounding
        values, vectors = torch.linalg.eigh((projected + projected.T) / 2)
        keep = values.abs().argsort(descending=True)[: min(c.rank, steps)]
        self._eigenvalues = values[keep]
        self._eigenvectors = (vectors[:, keep].to(basis).T @ basis).T  # P x p
        self.diagnostics = {
            "eigenvalues": [float(value) for value in self._eigenvalues],
            "non_positive_eigenvalues": int((self._eigenvalues <= 0).sum()),
            "steps": steps,
            "restarts": restarts,
        }
        shifted = (self._eigenvalues + c.damping).abs()
        if float(shifted.min()) <= 1e-12 * max(1.0, float(shifted.max())):
            raise EstimatorFailed(
                f"a kept eigenvalue plus damping is zero (|e + damping| = {float(shifted.min()):.3g}); "
                "raise arnoldi.damping"
            )

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        coefficients = (vectors @ self._eigenvectors).to(torch.float64)
        coefficients = coefficients / (self._eigenvalues + self.config.damping).to(coefficients.device)
        return coefficients.to(vectors.dtype) @ self._eigenvectors.T


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [Arnoldi]
