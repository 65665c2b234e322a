"""Gradient descent on many models at once: trains optima and re-trains leave-one-out models.

``K`` models are stacked along a leading dimension and advanced together: the forward pass is vectorised with
``vmap`` and the ``K`` independent losses are summed, so one backward pass gives every model its own gradient. Model
``k`` weights training example ``i`` by ``weights[k, i]`` (0 removes it), and all models see the same minibatch
sequence (common random numbers).

Removing a point re-weights it to 0 and keeps the ``1/n`` normalisation (a minibatch's weighted losses are divided by
its size, not by its total weight): model ``k`` minimises ``(1/n) sum_i w_ki l_i + (weight_decay / 2) ||theta||^2``.
That is the objective whose minimiser the influence function linearises, ``theta_-i - theta* ~ (1/n) H^-1 g_i``.
Dividing by the ``n - 1`` remaining points instead would move every leave-one-out model by a further common term
``(1/(n-1)) H^-1 (weight_decay theta*)`` that no influence estimate predicts (``docs/ground-truth.md``).

The minibatches come from the problem's tensors in memory, or, for a problem whose data does not fit there (one
with a ``load_batches`` method, :class:`StreamedBatches`), from its loader, which decodes them ahead of use.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.func import vmap
from tqdm.auto import tqdm

from benchmark.problem import Problem
from benchmark.task import Recipe


def minibatches(recipe: Recipe, n: int, device: torch.device) -> Iterator[Tensor | None]:
    """The recipe's minibatch index sequence (``None`` means the full batch), identical on every call."""
    if recipe.batch_size is None or recipe.batch_size >= n:
        yield from itertools.repeat(None, recipe.steps)
        return
    generator = torch.Generator().manual_seed(recipe.seed)
    steps = 0
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - recipe.batch_size + 1, recipe.batch_size):
            if steps == recipe.steps:
                return
            steps += 1
            yield order[start : start + recipe.batch_size]


@runtime_checkable
class StreamedBatches(Protocol):
    """A problem whose training data is streamed rather than indexed in memory."""

    def load_batches(self, batches: Sequence[Tensor | None]) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` of each index batch of ``batches`` in order (``None``: the full training set)."""


def batch_data(problem: Problem, batches: Sequence[Tensor | None]) -> Iterator[tuple[Tensor, Tensor]]:
    """The training examples of each minibatch: streamed by the problem if it can (:class:`StreamedBatches`),
    otherwise indexed from its tensors."""
    if isinstance(problem, StreamedBatches):
        yield from problem.load_batches(batches)
        return
    for batch in batches:
        yield (problem.x_train, problem.y_train) if batch is None else (problem.x_train[batch], problem.y_train[batch])


def descend(
    problem: Problem,
    thetas: Tensor,
    weights: Tensor,
    recipe: Recipe,
    progress: bool = False,
    description: str = "training",
) -> Tensor:
    """Run ``recipe`` on ``K`` models.

    Args:
        problem: gives the model, the loss, the training data and the weight decay.
        thetas: ``Tensor[K, P]`` starting points.
        weights: ``Tensor[K, n]`` example weights per model (1 keeps an example, 0 removes it).
        recipe: steps, learning rate, batch size, momentum, minibatch seed.

    Returns:
        ``Tensor[K, P]``: the parameters after ``recipe.steps`` updates of
        ``(1/B) sum_i w_ki l_i + (weight_decay / 2) ||theta_k||^2`` (sums over the minibatch of size ``B``, the full
        set for full-batch recipes): an unbiased estimate of ``(1/n) sum_i w_ki l_i + ...`` at every step.
    """
    weight_decay = problem.weight_decay

    def model_objective(theta: Tensor, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return (problem.losses(theta, x, y) * w).sum() / len(w)

    if len(thetas) == 1:  # a plain call is about twice as fast as vmap over a single model

        def batched(t: Tensor, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return model_objective(t[0], w[0], x, y)

    else:
        batched = vmap(model_objective, in_dims=(0, 0, None, None))
    thetas = thetas.detach().clone().requires_grad_(True)
    velocity = torch.zeros_like(thetas) if recipe.momentum else None
    bar = tqdm(total=recipe.steps, desc=description, disable=not progress, leave=False, mininterval=0.5, unit="step")
    batches = list(minibatches(recipe, problem.n_train, thetas.device))
    for batch, (x, y) in zip(batches, batch_data(problem, batches)):
        w = weights if batch is None else weights[:, batch]
        loss = batched(thetas, w, x, y).sum()
        (gradient,) = torch.autograd.grad(loss, thetas)
        with torch.no_grad():
            if weight_decay:
                gradient.add_(thetas, alpha=weight_decay)
            if velocity is not None:
                gradient = velocity.mul_(recipe.momentum).add_(gradient)
            thetas.sub_(gradient, alpha=recipe.lr)
        bar.update()
    bar.close()
    return thetas.detach()


def train(problem: Problem, recipe: Recipe, progress: bool = False) -> Tensor:
    """Train one model from ``problem.theta`` on the full training set; returns the final ``theta``."""
    weights = torch.ones(1, problem.n_train, dtype=problem.dtype, device=problem.device)
    return descend(problem, problem.theta.unsqueeze(0), weights, recipe, progress, "training optimum")[0]
