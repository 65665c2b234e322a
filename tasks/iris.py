"""``iris``: a small MLP on Iris, where the exact Hessian is cheap (the paper's section 5.1).

Data: scikit-learn's bundled copy of Iris (no network), features standardised with the training split's statistics,
a train/test split fixed by the seed. Optimum: full-batch gradient descent in float64.

Training and re-training use :func:`mlp_descend`, full-batch gradient descent with hand-written backpropagation for
many MLPs at once: the same updates as :func:`benchmark.numerics.training.descend` (equal to rounding), about 5x faster
for one model, which is what lets a study train hundreds of optima and leave-one-out models on a CPU. Hessian-vector
products (every estimator's curvature, LiSSA's minibatch ones above all) are written out too (:func:`mlp_hvp`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from filelock import Timeout
from torch import Tensor, nn
from tqdm.auto import tqdm

from benchmark import BuildContext, Problem, Protocol, Recipe, Task, hookimpl, non_negative, positive
from benchmark.common.cache import Cache, canonical
from benchmark.numerics.losses import cross_entropy
from tasks import shipped_studies

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclasses.dataclass
class IrisConfig:
    """Configuration of the Iris task (defaults: the paper's section 5.1).

    Attributes:
        depth: hidden layers.
        width: units per hidden layer.
        activation: ``relu`` or ``tanh``.
        weight_decay: L2 regulariser of the training objective (0 for the paper's "without weight decay").
        test_fraction: share of the 150 examples held out for testing.
        train_steps: full-batch gradient-descent steps to the optimum (paper: 60k).
        lr: learning rate of training and re-training (the paper gives none; 0.5 converges the default net to a
            gradient norm of about 1e-8 in 60k steps, below 2 / top eigenvalue of about 1.9).
        retrain_steps: leave-one-out re-training steps from the optimum (paper: 7.5k).
        retrain_batch_size: minibatch size of the re-training (``None``: full batch, as training; the paper does
            not say which optimiser re-trains).
        retrain_momentum: heavy-ball momentum of the re-training (stable at ``lr`` below ``2 (1 + momentum)`` over
            the top eigenvalue).
        test_point: ``max-loss`` (paper), ``pNN`` (loss percentile) or a test index.
        eval_fraction: share of the training points each selection scores (paper: the top 16.6%).
    """

    depth: int = 1
    width: int = 5
    activation: str = dataclasses.field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})
    weight_decay: float = 0.001
    test_fraction: float = 0.2
    train_steps: int = 60_000
    lr: float = 0.5
    retrain_steps: int = 7_500
    retrain_batch_size: int | None = None
    retrain_momentum: float = 0.0
    test_point: str | int = "max-loss"
    eval_fraction: float = 0.166

    def __post_init__(self) -> None:
        positive(depth=self.depth, width=self.width, lr=self.lr, eval_fraction=self.eval_fraction)
        non_negative(
            weight_decay=self.weight_decay,
            train_steps=self.train_steps,
            retrain_steps=self.retrain_steps,
            retrain_momentum=self.retrain_momentum,
        )
        if self.retrain_batch_size is not None:
            positive(retrain_batch_size=self.retrain_batch_size)
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")


def load_iris(seed: int, test_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised Iris features and labels, split by ``seed``: ``x_train, y_train, x_test, y_test``."""
    from sklearn.datasets import load_iris as sklearn_iris

    data = sklearn_iris()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train_ = order[:n_test], order[n_test:]
    mean, std = x[train_].mean(0), x[train_].std(0)
    x = (x - mean) / std
    return x[train_], y[train_], x[test], y[test]


def mlp(depth: int, width: int, activation: str, inputs: int = 4, classes: int = 3) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(width if depth else inputs, classes))
    return nn.Sequential(*layers)


def layer_shapes(depth: int, width: int, inputs: int = 4, classes: int = 3) -> list[tuple[int, int]]:
    """``(out_features, in_features)`` of each linear layer of :func:`mlp`, in order."""
    sizes = [inputs] + [width] * depth + [classes]
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]


def mlp_descend(
    thetas: Tensor,
    shapes: Sequence[tuple[int, int]],
    activation: str,
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    weight_decay: float | Tensor,
    recipe: Recipe,
    reproducible: bool = True,
    progress: bool = False,
    description: str = "training",
) -> Tensor:
    """Full-batch gradient descent of ``K`` MLPs at once, backpropagation written out (no autograd).

    Each model minimises ``(1/n) sum_i w_ki l_ki + (weight_decay_k / 2) ||theta_k||^2`` with cross-entropy
    ``l``, updating ``theta -= lr * (gradient + weight_decay * theta)``: the objective and update of
    :func:`benchmark.numerics.training.descend` (equal to rounding; ``tests/test_study.py`` checks it).

    Args:
        thetas: ``Tensor[K, P]`` starting points, laid out as :meth:`Problem.flatten` lays out :func:`mlp`'s
            parameters (each layer's weight, row-major, then its bias).
        shapes: ``(out, in)`` of each linear layer (:func:`layer_shapes`).
        activation: a key of :data:`ACTIVATIONS`, applied after every layer but the last.
        x: inputs, ``Tensor[n, d]`` shared by all models or ``Tensor[K, n, d]`` one set per model.
        y: class labels, ``Tensor[n]`` or ``Tensor[K, n]``.
        weights: ``Tensor[K, n]`` example weights per model (0 removes an example).
        weight_decay: one value, or ``Tensor[K]`` one per model.
        recipe: steps and learning rate; full batch and no momentum only.
        reproducible: make each model's result independent of the other models in the batch (bit for bit): batched
            matrix products over the examples are rounded differently at different batch positions, so the weight
            gradients are then taken one model at a time. Training from a random start can be chaotic enough to
            amplify that rounding, so optima are trained reproducibly; re-training from the optimum need not be.
        progress: show a progress bar.

    Returns:
        ``Tensor[K, P]``, the parameters after ``recipe.steps`` updates.
    """
    if recipe.batch_size is not None and recipe.batch_size < x.shape[-2]:
        raise ValueError(f"mlp_descend trains full-batch only, got batch_size={recipe.batch_size}")
    if recipe.momentum:
        raise ValueError(f"mlp_descend has no momentum, got momentum={recipe.momentum}")
    models = thetas.shape[0]
    thetas = thetas.detach().clone()
    layers = []
    start = 0
    for out_features, in_features in shapes:
        weight = thetas[:, start : start + out_features * in_features].view(models, out_features, in_features)
        start += out_features * in_features
        bias = thetas[:, start : start + out_features].unsqueeze(2)
        start += out_features
        layers.append((weight, weight.transpose(1, 2), bias))
    if start != thetas.shape[1]:
        raise ValueError(f"shapes {list(shapes)} hold {start} parameters, thetas have {thetas.shape[1]}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} (choices: {', '.join(ACTIVATIONS)})")
    # Activations are kept feature-major, [K, features, n]: the softmax then runs over a middle dimension, which is
    # ten times faster on a CPU than over a last dimension of three classes.
    n = x.shape[-2]
    inputs_t = x.to(thetas).expand(models, n, x.shape[-1]).transpose(1, 2)
    classes = shapes[-1][0]
    onehot = nn.functional.one_hot(y, classes).to(thetas).expand(models, n, classes).transpose(1, 2)
    coefficients = (weights / n).to(thetas).unsqueeze(1)
    decay = torch.as_tensor(weight_decay, dtype=thetas.dtype, device=thetas.device).reshape(-1, 1).expand(models, 1)
    relu = activation == "relu"
    act = torch.relu if relu else torch.tanh if reproducible else _fast_tanh
    last = len(layers) - 1
    every = max(1, recipe.steps // 200)
    bar = tqdm(total=recipe.steps, desc=description, disable=not progress, leave=False, mininterval=0.5, unit="step")
    for step in range(recipe.steps):
        activations = [inputs_t]
        a = inputs_t
        for index, (weight, _, bias) in enumerate(layers):
            z = torch.baddbmm(bias, weight, a)
            a = act(z) if index < last else z
            activations.append(a)
        delta = (torch.softmax(a, 1) - onehot) * coefficients
        gradients: list[Tensor] = []
        for index in range(last, -1, -1):
            _, transposed, _ = layers[index]
            previous = activations[index]
            gradients.append(delta.sum(2))
            if reproducible:
                per_model = map(torch.mm, delta.unbind(0), previous.transpose(1, 2).unbind(0))
                gradients.append(torch.stack(list(per_model)).view(models, -1))
            else:
                gradients.append(torch.bmm(delta, previous.transpose(1, 2)).view(models, -1))
            if index:
                delta = torch.bmm(transposed, delta)
                if relu:
                    delta = torch.ops.aten.threshold_backward(delta, previous, 0)
                else:
                    delta = torch.ops.aten.tanh_backward(delta, previous)
        gradients.reverse()
        gradient = torch.cat(gradients, 1)
        gradient.addcmul_(thetas, decay)
        thetas.sub_(gradient, alpha=recipe.lr)
        if (step + 1) % every == 0 or step + 1 == recipe.steps:
            bar.update(step + 1 - bar.n)
    bar.close()
    return thetas


def _fast_tanh(z: Tensor) -> Tensor:
    """``tanh`` as ``2 sigmoid(2z) - 1``, within 4e-16 of ``torch.tanh`` and three times as fast on a stack of models
    (float64 ``tanh`` runs scalar on a CPU). Its vectorised loop ends in a scalar tail whose rounding differs, which
    makes a model's result depend on its batch position, so reproducible training keeps ``torch.tanh``."""
    return torch.sigmoid(2 * z).mul_(2).sub_(1)


def mlp_hvp(
    theta: Tensor,
    shapes: Sequence[tuple[int, int]],
    activation: str,
    x: Tensor,
    y: Tensor,
    vectors: Tensor,
    weight_decay: float,
) -> Tensor:
    """Hessian-vector products of ``mean_i l_i(theta) + (weight_decay / 2) ||theta||^2`` for an MLP with
    cross-entropy, by Pearlmutter's R-operator written out: one forward and one backward pass, each with its
    directional derivative, for all vectors at once.

    The same products as :meth:`benchmark.numerics.problem.Problem.hvp` to rounding (``tests/test_study.py`` checks it),
    ten times faster on Iris minibatches, where LiSSA spends its time.

    Args:
        theta: ``Tensor[P]``, laid out as in :func:`mlp_descend`.
        shapes: ``(out, in)`` of each linear layer.
        activation: a key of :data:`ACTIVATIONS`.
        x, y: the examples of the objective, ``Tensor[b, d]`` and ``Tensor[b]``.
        vectors: ``Tensor[m, P]``.
        weight_decay: the regulariser of the objective.

    Returns:
        ``Tensor[m, P]``.
    """
    m = vectors.shape[0]
    weights, directions, start = [], [], 0
    for out_features, in_features in shapes:
        size = out_features * in_features
        weights.append(
            (
                theta[start : start + size].view(out_features, in_features),
                theta[start + size : start + size + out_features],
            )
        )
        directions.append(
            (
                vectors[:, start : start + size].view(m, out_features, in_features),
                vectors[:, start + size : start + size + out_features].unsqueeze(1),
            )
        )
        start += size + out_features
    relu = activation == "relu"
    last = len(shapes) - 1
    activations, r_activations, r_preactivations = [x], [torch.zeros(1, *x.shape, dtype=x.dtype, device=x.device)], []
    a, r_a = x, r_activations[0]
    for index, ((weight, bias), (v_weight, v_bias)) in enumerate(zip(weights, directions)):
        z = torch.addmm(bias, a, weight.T)
        r_z = r_a @ weight.T + torch.matmul(a, v_weight.transpose(1, 2)) + v_bias
        r_preactivations.append(r_z)
        if index < last:
            a = torch.relu(z) if relu else torch.tanh(z)
            slope = (z > 0).to(z) if relu else 1 - a * a
            r_a = slope * r_z
            activations.append(a)
            r_activations.append(r_a)
    batch = x.shape[0]
    p = torch.softmax(z, 1)
    delta = (p - nn.functional.one_hot(y, shapes[-1][0]).to(p)) / batch
    r_z = r_preactivations[-1]
    r_delta = (p * r_z - p * (p * r_z).sum(2, keepdim=True)) / batch
    pieces: list[Tensor] = []
    for index in range(last, -1, -1):
        (weight, _), (v_weight, _) = weights[index], directions[index]
        previous, r_previous = activations[index], r_activations[index]
        pieces.append(r_delta.sum(1))
        pieces.append((r_delta.transpose(1, 2) @ previous + delta.T @ r_previous).reshape(m, -1))
        if index:
            back = delta @ weight
            r_back = r_delta @ weight + delta @ v_weight
            if relu:
                slope = (previous > 0).to(previous)
                delta, r_delta = slope * back, slope * r_back
            else:
                slope = 1 - previous * previous
                curvature = -2 * previous * slope * r_preactivations[index - 1]
                delta, r_delta = slope * back, curvature * back + slope * r_back
    pieces.reverse()
    return torch.cat(pieces, 1) + weight_decay * vectors


@dataclasses.dataclass
class IrisProblem(Problem):
    """The Iris MLP's problem, with Hessian-vector products by :func:`mlp_hvp`.

    Attributes:
        activation: the MLP's activation, which :func:`mlp_hvp` differentiates twice.
    """

    activation: str = "relu"

    def hvp(self, vectors: Tensor, indices: Tensor | None = None) -> Tensor:
        if self.frozen:  # mlp_hvp differentiates every layer; a restricted problem takes the generic block product
            return super().hvp(vectors, indices)
        x, y = (self.x_train, self.y_train) if indices is None else (self.x_train[indices], self.y_train[indices])
        shapes = [tuple(v.shape) for v in self.params.values() if v.dim() == 2]
        return mlp_hvp(self.theta, shapes, self.activation, x, y, vectors.to(self.theta), self.weight_decay)


def _claim(cache: Cache, key: dict, held: contextlib.ExitStack) -> bool:
    """Take the cache lock of the optimum under ``key`` if no other process holds it and the optimum is still missing
    (kept in ``held``). An optimum another process is training is left to it: ``build`` later waits for its lock."""
    lock = cache.tensor_lock("optima", key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    held.callback(lock.release)
    return cache.load_tensors("optima", key, warn=False) is None


class Iris(Task):
    """MLP classifier on Iris; exact Hessian, full-batch training and re-training."""

    name = "iris"
    version = 1
    Config = IrisConfig
    protocol_fields = ("retrain_steps", "retrain_batch_size", "retrain_momentum", "test_point", "eval_fraction")
    # Its tensors are tiny: a second thread gains nothing, and while other processes load the cores, OpenMP's
    # waiting threads made a full-batch Hessian-vector product 100x slower here (250 ms against 1.9 ms).
    cpu_threads = 1

    def build(self, context: BuildContext) -> Problem:
        problem = self.initial_problem(context.seed).to(device=context.device)
        return self.trained(problem, self.train_recipe(), context)

    def initial_problem(self, seed: int) -> Problem:
        """The problem at its initialisation: the split and the initial parameters both fixed by ``seed``."""
        c = self.config
        x_train, y_train, x_test, y_test = load_iris(seed, c.test_fraction)
        module = self._initial_module(seed)
        problem = IrisProblem.from_module(
            module, cross_entropy, x_train, y_train, x_test, y_test, c.weight_decay, loss_module=nn.CrossEntropyLoss()
        )
        return dataclasses.replace(problem, activation=c.activation)

    def _initial_module(self, seed: int) -> nn.Module:
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return mlp(c.depth, c.width, c.activation).to(torch.float64)

    def initial_parameters(self, seed: int) -> Tensor:
        return torch.nn.utils.parameters_to_vector(self._initial_module(seed).parameters()).detach()

    def train_recipe(self) -> Recipe:
        """Full-batch gradient descent to the optimum."""
        return Recipe(steps=self.config.train_steps, lr=self.config.lr)

    def train_from(self, problem: Problem, recipe: Recipe, progress: bool = False) -> Tensor:
        """Training by :func:`mlp_descend` (batched hand-written backpropagation), reproducibly."""
        weights = torch.ones(1, problem.n_train, dtype=problem.dtype, device=problem.device)
        return self.descend(
            problem, problem.theta.unsqueeze(0), weights, recipe, progress, "training optimum", reproducible=True
        )[0]

    def descend(
        self,
        problem: Problem,
        thetas: Tensor,
        weights: Tensor,
        recipe: Recipe,
        progress: bool = False,
        description: str = "training",
        reproducible: bool = False,
    ) -> Tensor:
        """:func:`benchmark.numerics.training.descend` for this task's problems, by :func:`mlp_descend` where it
        applies (full batch, no momentum), else by the generic one (a study's minibatch or momentum re-training)."""
        if (recipe.batch_size is not None and recipe.batch_size < problem.n_train) or recipe.momentum:
            return super().descend(problem, thetas, weights, recipe, progress, description)
        c = self.config
        return mlp_descend(
            thetas,
            layer_shapes(c.depth, c.width),
            c.activation,
            problem.x_train,
            problem.y_train,
            weights,
            problem.weight_decay,
            recipe,
            reproducible,
            progress,
            description,
        )

    @classmethod
    def train_many(cls, tasks: Sequence[Iris], seeds: Sequence[int], context: BuildContext) -> int:
        """Train the optima of many ``(task, seed)`` pairs into the cache, models of one architecture together.

        Each optimum equals, bit for bit, the one :meth:`build` trains alone (:func:`mlp_descend` with
        ``reproducible=True``), and is stored under the same key, so :meth:`build` then loads it.

        Returns:
            How many optima were trained (the others were cached already).
        """
        cache = context.cache
        missing: dict[tuple, list[tuple[Iris, int]]] = {}
        for task, seed in zip(tasks, seeds):
            if cache.load_tensors("optima", task.problem_key(seed), warn=False) is None:
                c = task.config
                group = (c.depth, c.width, c.activation, c.test_fraction, c.train_steps, c.lr)
                missing.setdefault(group, []).append((task, seed))
        trained = 0
        for members in missing.values():
            members = list({canonical(t.problem_key(s)): (t, s) for t, s in members}.values())
            with contextlib.ExitStack() as held:
                members = [(task, seed) for task, seed in members if _claim(cache, task.problem_key(seed), held)]
                trained += cls._train_together(members, context)
        return trained

    @classmethod
    def _train_together(cls, members: list[tuple[Iris, int]], context: BuildContext) -> int:
        """Train the optima of ``members`` (one architecture) in one batch and store each; the caller holds their
        cache locks."""
        if not members:
            return 0
        problems = [task.initial_problem(seed).to(device=context.device) for task, seed in members]
        first = members[0][0]
        weights = torch.ones(len(problems), problems[0].n_train, dtype=torch.float64, device=context.device)
        thetas = mlp_descend(
            torch.stack([p.theta for p in problems]),
            layer_shapes(first.config.depth, first.config.width),
            first.config.activation,
            torch.stack([p.x_train for p in problems]),
            torch.stack([p.y_train for p in problems]),
            weights,
            torch.tensor([p.weight_decay for p in problems], dtype=torch.float64),
            first.train_recipe(),
            reproducible=True,
            progress=context.progress,
            description=f"training {len(problems)} optima",
        )
        for (task, seed), theta in zip(members, thetas):
            context.cache.store_tensors("optima", task.problem_key(seed), {"theta": theta})
        return len(members)

    def protocol(self) -> Protocol:
        c = self.config
        n_train = 150 - round(c.test_fraction * 150)
        return Protocol(
            test_point=c.test_point,
            eval_size=max(2, round(c.eval_fraction * n_train)),
            retrain=Recipe(
                steps=c.retrain_steps, lr=c.lr, batch_size=c.retrain_batch_size, momentum=c.retrain_momentum
            ),
        )

    def paper_reference(self, estimator: str, selection: str) -> dict[str, float] | None:
        c = self.config
        paper_setting = (c.depth, c.width, c.activation, c.test_point, c.retrain_steps, selection) == (
            1,
            5,
            "relu",
            "max-loss",
            7_500,
            "top",
        )
        if estimator != "exact" or not paper_setting:
            return None
        return {"spearman": 0.97 if c.weight_decay > 0 else 0.508}


@hookimpl
def bench_tasks() -> list[type[Task]]:
    return [Iris]


@hookimpl
def bench_studies() -> list[Path]:
    """The Iris studies of section 5.1 (depth, width, LiSSA), shipped with this plugin."""
    return shipped_studies("iris-")
