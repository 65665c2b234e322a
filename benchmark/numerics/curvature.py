"""Curvature references shared by the harness and the estimators: the dense eigendecomposition and power iteration."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from benchmark.numerics.problem import Problem

CURVATURES = ("hessian", "ggn")
"""The curvature matrices an estimator may invert: the Hessian of the objective (:meth:`Problem.hvp`) or its
generalised Gauss-Newton matrix (:meth:`Problem.ggnvp`)."""


def curvature_products(problem: Problem, curvature: str) -> Callable[..., Tensor]:
    """``problem``'s products with the ``curvature`` matrix (one of :data:`CURVATURES`): :meth:`Problem.hvp` or
    :meth:`Problem.ggnvp`, both ``(vectors, indices=None) -> Tensor[m, P]``."""
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r} (choices: {', '.join(CURVATURES)})")
    return problem.hvp if curvature == "hessian" else problem.ggnvp


class DenseHessian:
    """``H = V diag(e) V^T`` of a problem's objective, built densely from Hessian-vector products in ``dtype``
    (float64 unless asked otherwise) and eigendecomposed in float64; with ``curvature="ggn"`` the same for the
    generalised Gauss-Newton matrix (:meth:`Problem.ggnvp`) in place of ``H``, cached under its own key.

    Memory ``8 P^2`` bytes; time ``P`` Hessian-vector products plus an ``O(P^3)`` eigendecomposition. Use
    :meth:`of` to share one decomposition between the harness and the estimators of a run; a problem with a
    :attr:`~Problem.curvature_cache` keeps ``H`` on disk, so later runs on the same optimum skip the products.
    """

    def __init__(self, problem: Problem, dtype: torch.dtype = torch.float64, curvature: str = "hessian"):
        self.dtype = dtype
        self.curvature = curvature
        self.from_cache = problem.curvature_cache is not None

        def build() -> dict[str, Tensor]:
            self.from_cache = False
            cast = problem.to(dtype)
            return {"hessian": (cast.hessian() if curvature == "hessian" else cast.ggn()).to(torch.float64)}

        curvature_products(problem, curvature)  # an unknown curvature fails here, before any product
        if problem.curvature_cache is None:
            hessian = build()["hessian"]
        else:  # P products are the slow part (hours for a small CNN on a CPU); every run on this optimum reuses them
            cache, key = problem.curvature_cache
            # the Hessian's key is the one it had before the GGN existed, so cached Hessians stay valid
            entry = {**key, "hessian_dtype": str(dtype)}
            if curvature != "hessian":
                entry["curvature"] = curvature
            hessian = cache.tensors("hessians", entry, build)["hessian"]
        hessian = hessian.to(problem.device)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh((hessian + hessian.T) / 2)

    @staticmethod
    def shared(problem: Problem) -> DenseHessian | None:
        """The float64 decomposition of ``problem`` if :meth:`of` computed it already, else ``None``."""
        return problem.__dict__.get(_cache_key(torch.float64))

    @classmethod
    def of(cls, problem: Problem, dtype: torch.dtype = torch.float64, curvature: str = "hessian") -> DenseHessian:
        """The decomposition of ``problem``'s ``curvature`` matrix built in ``dtype``, computed on first use and kept
        on the problem object.

        Only the float64 Hessian is :meth:`shared` with the harness, whose iHVP residuals promise a float64 reference
        of ``(H + lambda I)^-1``.
        """
        key = _cache_key(dtype, curvature)
        if key not in problem.__dict__:
            problem.__dict__[key] = cls(problem, dtype, curvature)
        return problem.__dict__[key]

    def solve(self, vectors: Tensor, damping: float) -> Tensor:
        """``(H + damping I)^-1 v`` for each row ``v`` of ``vectors``, in float64."""
        basis = self.eigenvectors
        coefficients = (vectors.to(torch.float64) @ basis) / (self.eigenvalues + damping)
        return coefficients @ basis.T


def _cache_key(dtype: torch.dtype, curvature: str = "hessian") -> str:
    name = "_dense_hessian" if curvature == "hessian" else f"_dense_{curvature}"
    return name if dtype == torch.float64 else f"{name}_{str(dtype).removeprefix('torch.')}"


def top_eigenvalue(problem: Problem, iterations: int = 50, seed: int = 0, indices: Tensor | None = None) -> float:
    """Largest-magnitude eigenvalue of ``H`` by power iteration on Hessian-vector products (signed); of the minibatch
    Hessian on training ``indices`` if given."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(problem.n_params, generator=generator, dtype=problem.dtype).to(problem.device)
    v = v / torch.linalg.vector_norm(v)
    value = 0.0
    for _ in range(iterations):
        hv = problem.hvp(v.unsqueeze(0), indices)[0]
        value = float(v.dot(hv))
        norm = torch.linalg.vector_norm(hv)
        if norm == 0:
            return 0.0
        v = hv / norm
    return value
