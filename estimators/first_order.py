"""``first-order``: Hessian-free influence, the training-test gradient dot product (``H`` replaced by ``scale * I``)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from benchmark import LAYERS, Estimator, ScopedEstimator, hookimpl, positive


@dataclasses.dataclass
class FirstOrderConfig:
    """Hyperparameters of :class:`FirstOrder`.

    Attributes:
        scale: ``c`` in ``H ~ c I``; it scales every score alike, so it changes no correlation.
        layers: ``all``, or ``last``: the curvature of the last module's parameters only, the iHVP zero on every other
            parameter (:class:`~benchmark.ScopedEstimator`).
    """

    scale: float = 1.0
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})

    def __post_init__(self) -> None:
        positive(scale=self.scale)


class FirstOrder(ScopedEstimator):
    """Gradient-similarity influence ``(1/n) g_test^T g_i / c``: the identity stands in for ``H`` (cost: one
    gradient per training point, no curvature). Exact when ``H`` is a multiple of the identity."""

    name = "first-order"
    Config = FirstOrderConfig

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        return vectors / self.config.scale


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [FirstOrder]
