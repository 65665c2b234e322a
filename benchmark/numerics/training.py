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
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.func import vmap
from tqdm.auto import tqdm

from benchmark.common.cache import Cache
from benchmark.numerics.problem import Problem
from benchmark.numerics.recipes import Polish, Recipe

log = logging.getLogger("bench")


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
    """A problem whose training data is streamed rather than indexed in memory (an extension point for tasks).

    A task whose training set does not fit in memory builds a :class:`~benchmark.numerics.problem.Problem` subclass with
    a ``load_batches`` method (e.g. ``tasks/imagenet_problem.py``'s ``StreamedProblem``); :func:`descend`, and so
    training and leave-one-out re-training, then take each minibatch from it instead of indexing ``x_train`` and
    ``y_train`` (:func:`batch_data`). Structural: any problem with the method qualifies, no base class is needed.
    Importable as ``benchmark.StreamedBatches``.
    """

    def load_batches(self, batches: Sequence[Tensor | None]) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` of each index batch of ``batches`` in order (``None``: the full training set): the examples that
        indexing the training set with the batch would give, in that order (it may decode them ahead of use)."""


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
    observe: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run ``recipe`` on ``K`` models.

    Args:
        problem: gives the model, the loss, the training data and the weight decay.
        thetas: ``Tensor[K, P]`` starting points.
        weights: ``Tensor[K, n]`` example weights per model (1 keeps an example, 0 removes it).
        recipe: steps, learning rate, batch size, momentum, minibatch seed.
        observe: called after every update with the number of updates made so far and the ``[K, P]`` parameters
            (read them, copy what is kept: the tensor is updated in place).

    Returns:
        ``Tensor[K, P]``: the parameters after ``recipe.steps`` updates of
        ``(1/B) sum_i w_ki l_i + (weight_decay / 2) ||theta_k||^2`` (sums over the minibatch of size ``B``, the full
        set for full-batch recipes): an unbiased estimate of ``(1/n) sum_i w_ki l_i + ...`` at every step.
    """
    weight_decay = problem.weight_decay

    def model_objective(theta: Tensor, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return (problem.losses(theta, x, y) * w).sum() / len(w)

    batched: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    if len(thetas) == 1:  # a plain call is about twice as fast as vmap over a single model

        def batched(t: Tensor, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return model_objective(t[0], w[0], x, y)

    else:
        batched = vmap(model_objective, in_dims=(0, 0, None, None))
    thetas = thetas.detach().clone().requires_grad_(True)
    velocity = torch.zeros_like(thetas) if recipe.momentum else None
    bar = tqdm(total=recipe.steps, desc=description, disable=not progress, leave=False, mininterval=0.5, unit="step")
    batches = list(minibatches(recipe, problem.n_train, thetas.device))
    for step, (batch, (x, y)) in enumerate(zip(batches, batch_data(problem, batches)), start=1):
        w = weights if batch is None else weights[:, batch]
        loss = batched(thetas, w, x, y).sum()
        (gradient,) = torch.autograd.grad(loss, thetas)
        with torch.no_grad():
            if weight_decay:
                gradient.add_(thetas, alpha=weight_decay)
            if velocity is not None:
                gradient = velocity.mul_(recipe.momentum).add_(gradient)
            thetas.sub_(gradient, alpha=recipe.lr)
            if observe is not None:
                observe(step, thetas)
        bar.update()
    bar.close()
    return thetas.detach()


def train(problem: Problem, recipe: Recipe, progress: bool = False) -> Tensor:
    """Train one model from ``problem.theta`` on the full training set; returns the final ``theta``."""
    weights = torch.ones(1, problem.n_train, dtype=problem.dtype, device=problem.device)
    return descend(problem, problem.theta.unsqueeze(0), weights, recipe, progress, "training optimum")[0]


CHECKPOINT_EVERY = 50
"""L-BFGS iterations between two checkpoints of :func:`polish` (and between two checks of its progress)."""


def polish(
    problem: Problem, recipe: Polish, progress: bool = False, checkpoint: tuple[Cache, dict[str, Any]] | None = None
) -> Tensor:
    """``theta`` after full-batch L-BFGS from ``problem.theta`` on its whole training objective (:class:`Polish`).

    ``torch.optim.LBFGS`` with a strong-Wolfe line search runs in rounds of :data:`CHECKPOINT_EVERY` iterations and
    stops once the gradient norm is at most ``recipe.gradient_tol``, after ``recipe.max_steps`` iterations, or when a
    round no longer lowers the objective (the floor of the problem's floating-point precision). The gradient norm is
    not monotone on the way: from a minibatch-SGD optimum it often grows first, while L-BFGS follows a flat valley
    downhill. (A trust-region Newton-CG method on exact Hessian-vector products was tried too: on LeNet and the small
    CNN its quadratic model held only within steps of 0.01-0.05, and it lowered the objective less per second.)

    With ``checkpoint`` (a cache and a key), the iterate is stored after every round, and a later call with the same
    key resumes from the last one (with a fresh L-BFGS memory): a polish of hours survives interruptions.
    """
    theta = problem.theta.detach().clone()
    start = 0
    if checkpoint is not None:
        cache, key = checkpoint
        for done in range(recipe.max_steps - recipe.max_steps % CHECKPOINT_EVERY, 0, -CHECKPOINT_EVERY):
            found = cache.load_tensors("polish-checkpoints", {**key, "step": done}, warn=False)
            if found is not None and found.keys() == {"theta"} and found["theta"].shape == theta.shape:
                theta, start = found["theta"].to(theta), done
                log.info("L-BFGS resumes from its checkpoint after iteration %d", done)
                break
    theta.requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=CHECKPOINT_EVERY,
        history_size=recipe.history,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        value, gradient = problem.objective_and_gradient(theta)
        theta.grad = gradient
        return torch.tensor(value, dtype=torch.float64)

    value, gradient = problem.objective_and_gradient(theta)
    norm = float(torch.linalg.vector_norm(gradient))
    bar = tqdm(
        total=recipe.max_steps,
        initial=start,
        desc="polishing optimum (L-BFGS)",
        disable=not progress,
        leave=False,
        mininterval=0.5,
        unit="step",
    )
    done = start
    while norm > recipe.gradient_tol and done < recipe.max_steps:
        before = optimiser.state[theta].get("n_iter", 0)
        optimiser.param_groups[0]["max_iter"] = min(CHECKPOINT_EVERY, recipe.max_steps - done)
        optimiser.step(closure)
        done += max(1, optimiser.state[theta]["n_iter"] - before)
        previous = value
        value, gradient = problem.objective_and_gradient(theta)
        norm = float(torch.linalg.vector_norm(gradient))
        bar.update(done - bar.n)
        bar.set_postfix_str(f"J {value:.6g}, |grad| {norm:.2e}")
        log.debug("L-BFGS %d: J %.9g, |grad| %.3e", done, value, norm)
        if checkpoint is not None and done % CHECKPOINT_EVERY == 0:
            state = {"theta": theta.detach().clone()}
            checkpoint[0].tensors("polish-checkpoints", {**checkpoint[1], "step": done}, lambda: state)
        if not value < previous:
            break
    bar.close()
    return theta.detach()
