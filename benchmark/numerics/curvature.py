"""Curvature references shared by the harness and the estimators: the dense eigendecomposition and power iteration."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.numerics.problem import Problem


class DenseHessian:
    """``H = V diag(e) V^T`` of a problem's objective, built densely from Hessian-vector products in ``dtype``
    (float64 unless asked otherwise) and eigendecomposed in float64.

    Memory ``8 P^2`` bytes; time ``P`` Hessian-vector products plus an ``O(P^3)`` eigendecomposition. Use
    :meth:`of` to share one decomposition between the harness and the estimators of a run; a problem with a
    :attr:`~Problem.curvature_cache` keeps ``H`` on disk, so later runs on the same optimum skip the products.
    """

    def __init__(self, problem: Problem, dtype: torch.dtype = torch.float64):
        self.dtype = dtype
        self.from_cache = problem.curvature_cache is not None

        def build() -> dict[str, Tensor]:
            self.from_cache = False
            return {"hessian": problem.to(dtype).hessian().to(torch.float64)}

        if problem.curvature_cache is None:
            hessian = build()["hessian"]
        else:  # P products are the slow part (hours for a small CNN on a CPU); every run on this optimum reuses them
            cache, key = problem.curvature_cache
            hessian = cache.tensors("hessians", {**key, "hessian_dtype": str(dtype)}, build)["hessian"]
        hessian = hessian.to(problem.device)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh((hessian + hessian.T) / 2)

    @staticmethod
    def shared(problem: Problem) -> DenseHessian | None:
        """The float64 decomposition of ``problem`` if :meth:`of` computed it already, else ``None``."""
        return problem.__dict__.get(_cache_key(torch.float64))

    @classmethod
    def of(cls, problem: Problem, dtype: torch.dtype = torch.float64) -> DenseHessian:
        """The decomposition of ``problem`` built in ``dtype``, computed on first use and kept on the problem object.

        Only the float64 one is :meth:`shared` with the harness, whose iHVP residuals promise a float64 reference.
        """
        key = _cache_key(dtype)
        if key not in problem.__dict__:
            problem.__dict__[key] = cls(problem, dtype)
        return problem.__dict__[key]

    def solve(self, vectors: Tensor, damping: float) -> Tensor:
        """``(H + damping I)^-1 v`` for each row ``v`` of ``vectors``, in float64."""
        basis = self.eigenvectors
        coefficients = (vectors.to(torch.float64) @ basis) / (self.eigenvalues + damping)
        return coefficients @ basis.T


def _cache_key(dtype: torch.dtype) -> str:
    return "_dense_hessian" if dtype == torch.float64 else f"_dense_hessian_{str(dtype).removeprefix('torch.')}"


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
