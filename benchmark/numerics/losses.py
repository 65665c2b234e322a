"""Per-example losses for tasks, written to be fast under ``torch.func`` transforms."""

from __future__ import annotations

import torch
from torch import Tensor


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy ``logsumexp(z) - z_y``: ``Tensor[N, C]``, ``Tensor[N]`` -> ``Tensor[N]``.

    Same values as ``F.cross_entropy(..., reduction="none")``, but forward-over-reverse differentiation of the built-in
    goes through TorchScript decompositions of ``nll_loss_backward`` that cost 3-40 ms a call on a CPU; this form
    costs under 1 ms (measured on a 16 x 3 minibatch), and Hessian-vector products are the estimators' inner loop.
    """
    return torch.logsumexp(outputs, dim=1) - outputs.gather(1, targets.unsqueeze(1)).squeeze(1)
