"""A :class:`~benchmark.numerics.problem.Problem` whose images are streamed from disk, and the paper's noise checks.

:class:`StreamedProblem` holds its training and test images as :class:`~tasks.imagenet_data.ImageRows` (decoded on
access) instead of tensors, and overrides every full-data computation to stream the data in batches through a
``DataLoader``: the objective, its gradient norm, the test losses, Hessian-vector products and the products of every
training gradient with a vector (one forward-mode pass per batch: the influence of every training point, never an
``n x P`` matrix). Minibatch computations (``hvp(v, indices)``, per-example gradients) decode their few rows on
access, and leave-one-out re-training streams its minibatches through :meth:`StreamedProblem.load_batches`
(:func:`benchmark.numerics.training.descend`). The results equal the in-memory
:class:`~benchmark.numerics.problem.Problem` on the same data up to the order of floating-point sums (pinned by
``tests/test_imagenet.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from benchmark import Problem
from tasks.imagenet_data import ImageRows


@dataclasses.dataclass
class StreamedProblem(Problem):
    """A problem on :class:`ImageRows` data (``x_train``/``x_test``), streamed in batches of their ``chunk_size``.

    ``y_train``/``y_test`` are ordinary label tensors. :meth:`objective` over the full set is for evaluation only
    (differentiating it would keep every batch's graph); :meth:`gradient_norm` and :meth:`hvp` stream instead.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.x_train, ImageRows) or not isinstance(self.x_test, ImageRows):
            raise TypeError("StreamedProblem needs ImageRows for x_train and x_test")

    def train_slices(self, chunk_size: int | None = None) -> list[slice]:
        size = chunk_size or self.chunk_size or self.x_train.chunk_size
        return [slice(start, min(start + size, self.n_train)) for start in range(0, self.n_train, size)]

    # -- streaming ---------------------------------------------------------------------------------------------------
    def _train_passes(self, chunk_size: int | None = None) -> Iterator[tuple[slice, Tensor, Tensor]]:
        return self.x_train.passes(chunk_size or self.chunk_size)

    def load_batches(self, batches: Sequence[Tensor | None]) -> Iterator[tuple[Tensor, Tensor]]:
        """The training examples of each minibatch of ``batches`` (``None``: the full set), prefetched by the loader's
        workers: the data source of :func:`benchmark.numerics.training.descend` for problems not held in memory."""
        return self.x_train.load(batches)

    def objective(self, theta: Tensor, indices: Tensor | None = None) -> Tensor:
        if indices is not None:
            return super().objective(theta, indices)
        total = theta.new_zeros(())
        for _, x, y in self._train_passes():
            total = total + self.losses(theta, x, y).sum()
        return total / self.n_train + 0.5 * self.weight_decay * theta.dot(theta)

    def test_losses(self, theta: Tensor | None = None) -> Tensor:
        theta = self.theta if theta is None else theta
        out = theta.new_empty(len(self.x_test))
        with torch.no_grad():
            for rows, x, y in self.x_test.passes():
                out[rows] = self.losses(theta, x, y)
        return out

    def test_outputs(self, theta: Tensor | None = None) -> Tensor:
        """Model outputs on every test example, ``Tensor[m, classes]`` (for accuracies)."""
        theta = self.theta if theta is None else theta
        with torch.no_grad():
            return torch.cat([self.model(self.model_params(theta), x) for _, x, _ in self.x_test.passes()])

    def gradient_norm(self) -> float:
        total = self.weight_decay * self.theta
        for _, x, y in self._train_passes():
            total = total + grad(lambda t: self.losses(t, x, y).sum())(self.theta) / self.n_train
        return float(torch.linalg.vector_norm(total))

    def iter_train_gradients(self, chunk_size: int = 1024) -> Iterator[tuple[slice, Tensor]]:
        for rows, x, y in self._train_passes(chunk_size):
            yield rows, self._example_gradients(x, y)

    def train_gradient_products(self, vectors: Tensor, chunk_size: int | None = None) -> Tensor:
        """``G_train @ vectors.T`` (``Tensor[m, n]``), one forward-mode pass per streamed batch and vector."""
        out = vectors.new_empty(len(vectors), self.n_train)
        for rows, x, y in self._train_passes(chunk_size):

            def batch_losses(theta: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
                return self.losses(theta, x, y)

            out[:, rows] = vmap(lambda v: jvp(batch_losses, (self.theta,), (v,))[1])(vectors)
        return out

    def hvp(self, vectors: Tensor, indices: Tensor | None = None) -> Tensor:
        """``H v`` per row of ``vectors``: on a minibatch of ``indices`` (decoded now), or streamed over the full set
        and summed batch by batch (forward-over-reverse), with memory of one batch's activations. A training set of
        one batch takes the base class's path, which keeps the gradient's graph between calls."""
        if indices is not None or len(self.train_slices()) == 1:  # one batch: the base keeps its gradient graph
            return super().hvp(vectors, indices)
        total = self.weight_decay * vectors
        for rows, x, y in self._train_passes():
            part = self._hvp_on(vectors, x, y, weight_decay=0.0)
            total = total + part * ((rows.stop - rows.start) / self.n_train)
        return total


def batch_gradient_norms(
    problem: StreamedProblem, batch_size: int = 128, max_batches: int | None = None, seed: int = 0
) -> Tensor:
    """The 2-norm of the gradient of the mean training loss (no regulariser) on minibatches of ``batch_size`` at the
    optimum, over a seeded shuffle of the training set (the paper's appendix D convergence check, which reports the
    mean: 20.18 for its ResNet-50, 15.89 for torchvision's). At most ``max_batches`` batches (``None``: one epoch,
    dropping a short last batch unless it is the only one)."""
    order = torch.randperm(problem.n_train, generator=torch.Generator().manual_seed(seed))
    count = max(1, problem.n_train // batch_size)
    if max_batches is not None:
        count = min(count, max_batches)
    batches = [order[b * batch_size : (b + 1) * batch_size] for b in range(count)]
    norms = []
    for x, y in problem.load_batches(batches):
        gradient = grad(lambda t: problem.losses(t, x, y).mean())(problem.theta)
        norms.append(torch.linalg.vector_norm(gradient))
    return torch.stack(norms)


def _accuracy(outputs: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, outputs.shape[1])
    return float((outputs.topk(k, dim=1).indices == labels.unsqueeze(1)).any(dim=1).float().mean())


def retrain_all_check(
    problem: StreamedProblem, reference_theta: Tensor, test_index: int, loo_effects: Sequence[float]
) -> dict[str, Any]:
    """The paper's appendix D check of whether leave-one-out effects rise above the re-training noise: how much
    re-training on *all* points with the leave-one-out recipe moves the test losses, against the LOO effects (paper:
    -0.679 and +0.066 for its two test points, larger than their LOO effects; top-5 92.302% -> 92.336%).

    Args:
        problem: the problem at its optimum ``theta*``.
        reference_theta: ``theta*`` re-trained on all training points (the ground truth's reference,
            :meth:`benchmark.groundtruth.engine.GroundTruth.reference`).
        test_index: the evaluated test point.
        loo_effects: the measured leave-one-out loss changes of that test point.

    Returns:
        The test point's loss change, the median and largest |LOO effect| and their ratio, the mean and median
        |loss change| over every test point, and top-1/top-5 accuracy before and after.
    """
    theta = reference_theta.to(problem.theta)
    change = problem.test_losses(theta) - problem.test_losses()
    outputs_before, outputs_after = problem.test_outputs(), problem.test_outputs(theta)
    labels = problem.y_test
    effects = torch.tensor([abs(float(e)) for e in loo_effects], dtype=torch.float64)
    point_change = float(change[test_index])
    median_effect = float(effects.quantile(0.5)) if len(effects) else None
    abs_change = change.abs().double().cpu()
    return {
        "test_index": int(test_index),
        "loss_change": point_change,
        "median_abs_loo_effect": median_effect,
        "max_abs_loo_effect": float(effects.max()) if len(effects) else None,
        "change_to_median_loo_effect": abs(point_change) / median_effect if median_effect else None,
        "test_set_mean_abs_loss_change": float(abs_change.mean()),
        "test_set_median_abs_loss_change": float(abs_change.quantile(0.5)),
        "top1_before": _accuracy(outputs_before, labels, 1),
        "top1_after": _accuracy(outputs_after, labels, 1),
        "top5_before": _accuracy(outputs_before, labels, 5),
        "top5_after": _accuracy(outputs_after, labels, 5),
    }


def batch_gradient_check(
    problem: StreamedProblem, batch_size: int = 128, max_batches: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Summary of :func:`batch_gradient_norms` (mean, sd, min, max) beside the paper's means."""
    norms = batch_gradient_norms(problem, batch_size, max_batches, seed).double().cpu()
    return {
        "batch_size": batch_size,
        "batches": len(norms),
        "mean": float(norms.mean()),
        "sd": float(norms.std()) if len(norms) > 1 else 0.0,
        "min": float(norms.min()),
        "max": float(norms.max()),
        "paper_mean": {"their_resnet50": 20.18, "torchvision_resnet50": 15.89},
    }


def epochs_to_steps(epochs: float, n: int, batch_size: int) -> int:
    """Minibatch updates in ``epochs`` passes over ``n`` examples (at least one)."""
    return max(1, math.ceil(epochs * max(1, n // batch_size if batch_size < n else 1)))
