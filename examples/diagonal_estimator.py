"""An example third-party estimator plugin: the Hessian replaced by its diagonal, estimated by Hutchinson's method.

Use it with ``bench run --task iris -p examples.diagonal_estimator --estimator diagonal,exact`` (from the repository
root) or ``-p path/to/diagonal_estimator.py`` (from anywhere), check it with
``benchmark.contracts.testing.check_estimator(Diagonal)``, or install it under the ``bench`` entry-point group::

    [project.entry-points.bench]
    diagonal = "my_package.diagonal_estimator"
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import Estimator, Problem, hookimpl


@dataclasses.dataclass
class DiagonalConfig:
    """``damping`` is added to the diagonal; ``samples`` Rademacher probes estimate it; ``seed`` draws them."""

    damping: float = 0.001
    samples: int = 100
    seed: int = 0


class Diagonal(Estimator):
    """iHVP with ``diag(H)`` for ``H``: ``v / (d + damping)``, ``d = E[z * Hz]`` over Rademacher ``z`` (Hutchinson).

    Cost: ``samples`` Hessian-vector products to prepare; each iHVP is an elementwise division.
    """

    name = "diagonal"
    Config = DiagonalConfig
    damping_field = "damping"  # a task's protocol damping (e.g. 0.01 on MNIST) sets it unless the user does

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        generator = torch.Generator().manual_seed(self.config.seed)
        probes = torch.randint(0, 2, (self.config.samples, problem.n_params), generator=generator)
        probes = (2 * probes - 1).to(problem.theta)
        self.diagonal = (probes * problem.hvp(probes)).mean(0)
        self.diagnostics = {"min_diagonal": float(self.diagonal.min())}

    def ihvp(self, vectors: Tensor) -> Tensor:
        return vectors / (self.diagonal + self.config.damping).clamp_min(1e-12)


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [Diagonal]
