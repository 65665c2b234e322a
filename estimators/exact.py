"""``exact``: the dense Hessian (or generalised Gauss-Newton matrix) of the training objective, inverted through its
eigendecomposition, in float64."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import (
    LAYERS,
    Estimator,
    EstimatorFailed,
    EstimatorSkipped,
    Problem,
    ScopedEstimator,
    hookimpl,
    non_negative,
    positive,
)
from benchmark.numerics.curvature import CURVATURES, DenseHessian


@dataclasses.dataclass
class ExactConfig:
    """Hyperparameters of :class:`Exact`.

    Attributes:
        damping: ``lambda`` in ``(H + lambda I)^-1``.
        max_params: skip problems with more parameters (the Hessian takes ``8 P^2`` bytes): such a run is
            recorded as skipped, with the reason, not as failed.
        hessian_dtype: the precision of the ``P`` Hessian-vector products that build ``H``; its eigendecomposition
            and the solves are float64 either way. ``float32`` is for vision models, whose float64 convolutions take
            CPU fallbacks, far slower than the float32 kernels (the Table 1 ``exact`` rows build the small CNN's
            Hessian so; float32 products differ from float64 by about 1e-5 relatively); it is then as precise as
            ``cg`` in float32.
        curvature: the matrix inverted in place of ``H``: ``hessian``, or ``ggn``, the generalised Gauss-Newton matrix
            ``(1/n) sum_i J_i^T H_i J_i + weight_decay I`` (:meth:`~benchmark.Problem.ggnvp`; positive
            semi-definite for cross-entropy and squared error), built and cached on disk beside the Hessian under its
            own key.
        layers: ``all``, or ``last``: the curvature of the last module's parameters only, the iHVP zero on every other
            parameter (:class:`~benchmark.ScopedEstimator`).
    """

    damping: float = 0.001
    max_params: int = 20_000
    hessian_dtype: str = dataclasses.field(default="float64", metadata={"choices": ("float64", "float32")})
    curvature: str = dataclasses.field(default="hessian", metadata={"choices": CURVATURES})
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(max_params=self.max_params)


class Exact(ScopedEstimator):
    """Exact iHVP: ``H = V diag(e) V^T`` built densely from Hessian-vector products, solved in float64.

    Cost: ``O(P^2)`` memory, ``P`` Hessian-vector products plus an ``O(P^3)`` eigendecomposition to prepare; each
    iHVP is then two matrix products. Fails when ``H + damping I`` is singular. Diagnostics: the top and bottom
    eigenvalues of ``H`` (without damping), so an indefinite Hessian is visible, and ``hessian_from_cache`` (then
    the preparation time is the load of an earlier run's Hessian, not the products). With ``curvature: ggn`` all of
    this holds for the generalised Gauss-Newton matrix in place of ``H`` (its products are
    :meth:`~benchmark.Problem.ggnvp`).
    """

    name = "exact"
    Config = ExactConfig
    damping_field = "damping"

    def prepare_scope(self, problem: Problem) -> None:
        if problem.n_params > self.config.max_params:
            raise EstimatorSkipped(
                f"{problem.n_params} parameters exceed exact.max_params={self.config.max_params} "
                f"(a dense Hessian would take {8 * problem.n_params**2 / 2**30:.1f} GiB)"
            )
        self._hessian = DenseHessian.of(problem, getattr(torch, self.config.hessian_dtype), self.config.curvature)
        eigenvalues = self._hessian.eigenvalues
        self.diagnostics = {
            "top_eigenvalue": float(eigenvalues[-1]),
            "bottom_eigenvalue": float(eigenvalues[0]),
            "hessian_from_cache": self._hessian.from_cache,
        }
        shifted = (eigenvalues + self.config.damping).abs()
        if float(shifted.min()) <= 1e-12 * max(1.0, float(shifted.max())):
            raise EstimatorFailed(
                f"{'H' if self.config.curvature == 'hessian' else 'GGN'} + damping I is singular "
                f"(smallest |eigenvalue| {float(shifted.min()):.3g}); raise exact.damping"
            )

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        return self._hessian.solve(vectors, self.config.damping).to(vectors.dtype)


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [Exact]
