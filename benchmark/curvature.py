"""Curvature references shared by the harness and the estimators: the dense eigendecomposition and power iteration."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.problem import Problem


class DenseHessian:
    """``H = V diag(e) V^T`` of a problem's objective, computed densely in float64.

    Memory ``8 P^2`` bytes; time ``P`` Hessian-vector products plus an ``O(P^3)`` eigendecomposition. Use
    :meth:`of` to share one decomposition between the harness and the estimators of a run.
    """

    def __init__(self, problem: Problem):
        hessian = problem.to(torch.float64).hessian()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh((hessian + hessian.T) / 2)

    @staticmethod
    def shared(problem: Problem) -> DenseHessian | None:
        """The decomposition of ``problem`` if :meth:`of` computed it already, else ``None``."""
        return problem.__dict__.get("_dense_hessian")

    @classmethod
    def of(cls, problem: Problem) -> DenseHessian:
        """The decomposition of ``problem``, computed on first use and kept on the problem object."""
        if "_dense_hessian" not in problem.__dict__:
            problem.__dict__["_dense_hessian"] = cls(problem)
        return problem.__dict__["_dense_hessian"]

    def solve(self, vectors: Tensor, damping: float) -> Tensor:
        """``(H + damping I)^-1 v`` for each row ``v`` of ``vectors``, in float64."""
        basis = self.eigenvectors
        coefficients = (vectors.to(torch.float64) @ basis) / (self.eigenvalues + damping)
        return coefficients @ basis.T


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
