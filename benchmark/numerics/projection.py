"""Random projections of per-example gradients (TRAK, TracIn's random-projection variant), drawn as ``traker`` draws
them so that the two can be compared on the same matrix."""

from __future__ import annotations

import torch
from torch import Tensor

PROJECTIONS = ("rademacher", "normal")
"""The entries a projection matrix may have: ``+-1`` with equal probability, or standard normal."""


def projection_matrix(dimension: int, projection_dim: int, seed: int, model_id: int, kind: str) -> Tensor:
    """The ``[dimension, projection_dim]`` float32 matrix ``traker`` 0.3.2's ``BasicProjector`` projects model
    ``model_id``'s gradients with: columns in blocks of ``min(projection_dim, 100)``, block ``b`` drawn by a CPU
    ``torch.Generator`` seeded ``seed + 1000 b + 100000 model_id``, Rademacher (``+-1``) or standard normal entries,
    unscaled (TRAK's scores do not depend on the projection's scale)."""
    block = min(projection_dim, 100)
    columns = []
    generator = torch.Generator()
    for index in range((projection_dim + block - 1) // block):
        generator.manual_seed(seed + 1000 * index + 100_000 * model_id)
        matrix = torch.empty(dimension, block, dtype=torch.float32)
        if kind == "normal":
            matrix.normal_(generator=generator)
        else:
            matrix.bernoulli_(0.5, generator=generator).mul_(2.0).sub_(1.0)
        columns.append(matrix[:, : min(block, projection_dim - index * block)])
    return torch.cat(columns, dim=1)
