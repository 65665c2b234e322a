"""``mnist-lr`` and ``mnist-mlp``: the two MNIST-10 settings for which dattri (Deng et al., "dattri: a library for
efficient data attribution", NeurIPS 2024 datasets & benchmarks) publishes linear datamodeling scores, so that this
harness's numbers can sit beside dattri's.

What dattri does (dattri 0.3.0, the package's own files):

- data (``dattri/benchmark/load.py``: ``SAMPLERSIZE_MAP``, ``SubsetSampler(range(...))``;
  ``dattri/script/dattri_retrain.py``: ``SubsetRandomSampler(list(range(5000)))``): the **first 5,000** of MNIST's
  60,000 training images and the **first 500** of its 10,000 test images, pixels in [0, 1] normalised with mean
  0.1307 and std 0.3081 (``dattri/benchmark/datasets/mnist/data.py``), the normalisation of
  :func:`tasks.datasets.load_mnist`;
- ``lr`` (``dattri/benchmark/models/logistic_regression``): ``nn.Linear(784, 10)`` on the flattened image, 7,850
  parameters; trained by ``train_mnist_lr`` (``dattri/benchmark/datasets/mnist/mnist_lr.py``): ``torch.manual_seed``
  then the model, cross-entropy, ``torch.optim.SGD(lr=0.01)`` (no momentum, no weight decay), 20 epochs, batch size 32
  (``DEFAULT_BATCH_SIZE`` of ``dattri_retrain.py``);
- ``mlp`` (``dattri/benchmark/models/mlp``): ``fc1 784->128, ReLU, dropout 0.1, fc2 128->64, ReLU, dropout 0.1,
  fc3 64->10``, 109,386 parameters; trained by ``train_mnist_mlp`` (``mnist_mlp.py``): ``SGD(lr=0.01,
  momentum=0.9)``, no weight decay, 50 epochs, batch size 64;
- LDS ground truth (``dattri/model_util/retrain.py``, ``retrain_lds``; ``dattri/metric/ground_truth.py``): 100
  random half subsets (``np.random.default_rng(seed + i).choice(5000, 2500, replace=False)``), each trained **from
  scratch** with the same function, seed ``seed + i * runs + j``, on a loader over the subset alone (batch size as
  above, reshuffled per epoch) for the same number of **epochs**, i.e. half the steps of a full-data model; the target
  is minus the test loss, averaged over the runs of a subset.

What this module adopts: the same data (first ``train_size`` / ``test_size`` images, not a random draw; the data do
not depend on the seed), the same architectures with the same parameter names and order, the same initialisation
(``initial_parameters(seed)`` equals dattri's model after ``torch.manual_seed(seed)``, bit for bit), cross-entropy,
the same optimiser, learning rate, momentum, batch size and epochs, float32, and no weight decay by default.

What differs, because the harness trains deterministic models with :class:`benchmark.Recipe` SGD phases:

- **no dropout** in the MLP (the harness needs a deterministic function of the parameters for per-example gradients,
  Hessians and leave-one-out re-training); dattri's MLP trains with dropout 0.1 and is evaluated without it;
- the minibatch order is :func:`benchmark.numerics.training.minibatches`'s (a permutation per epoch drawn from the
  recipe's seed), not torch's ``SubsetRandomSampler`` on the global generator, and the last partial batch of each
  epoch is dropped (5,000 = 156 x 32 + 8 and 78 x 64 + 8): 3,120 steps for ``lr`` and 3,900 for ``mlp`` instead of
  3,140 and 3,950;
- the objective is the harness's ``mean loss + (weight_decay / 2) ||theta||^2``; with ``weight_decay`` 0 (the
  default, dattri's) that is dattri's loss exactly;
- the optimum is dattri's full-data model (SGD alone, no polish), so it is not a stationary point; the leave-one-out
  ground truth of ``bench run`` measures against a reference re-trained on all points (``docs/ground-truth.md``).

Subset models as dattri trains them: a half subset trained for the recipe's epochs over the subset itself takes
``epochs x floor(2,500 / B)`` steps of ``B`` subset points (1,560 for ``lr``, 1,950 for ``mlp``). Weighting the kept
points 2 in the full set's minibatches (``B`` points, about ``B / 2`` of them kept) with the full recipe's steps gives
the same expected gradient per step but twice as many steps, so twice the training time of dattri's subset models; with
the steps halved it matches dattri in expectation, with the minibatch noise of ``B / 2`` points. To reproduce dattri's
subset training exactly (up to the minibatch order), :func:`relu_mlp_descend` also trains ``K`` models on ``K`` data
sets of one size (``x`` of shape ``[K, 2500, 784]``, weights 1, ``epochs x floor(2500 / B)`` steps).

This harness's linear datamodeling score (``bench run --task mnist-lr --truth lds``, :mod:`benchmark.groundtruth.lds`)
trains its subset models with the task's recipe in steps (the full-data model's 3,120 or 3,900, kept points weighted
``n / |S|``), so twice as many steps as dattri's subset models, and shares one initialisation and minibatch order
among the subsets of a training seed where dattri seeds each subset model apart: a less noisy ground truth, and
models nearer each subset's optimum, than dattri's. :data:`DATTRI_LDS` holds the scores dattri publishes, which the
leaderboard shows beside ours with their source.

Protocol (``bench run``'s leave-one-out ground truth, from the optimum, same learning rate, batch size and
momentum). ``lr`` re-trains for the whole training length, 20 epochs: the model is convex, so re-training longer only
realises more of each removal's effect (it builds up along each Hessian eigendirection of curvature ``c`` as
``1 - (1 - lr c)^steps``), and 20 epochs realise as much of it as the optimum's own training did (dattri's own
leave-one-out models are trained from scratch for that long); stacked, it costs under a second per model. ``mlp``
re-trains for 3 epochs, 6% of its training, the share of Basu et al. and of this harness's ``mnist`` and ``cifar``
tasks: the MLP is not convex and its optimum not stationary, so longer re-training adds mostly drift and SGD noise, and
re-training as long as training would cost 17x as much. Whole epochs, so that every kept point is visited equally
often. The protocol damping follows the re-training horizon: ``T`` steps of gradient descent at the effective rate
``lr / (1 - momentum)`` leave curvature below about ``(1 - momentum) / (T lr)`` unresolved, so estimators are
evaluated at that damping (0.032 for ``lr``, 0.043 for ``mlp``, two significant digits). Without weight decay the
logistic regression's Hessian is singular (121 pixels are constant over the first 5,000 images), so some damping is
needed. dattri instead tunes the damping of each estimator on its LDS ground truth (``experiments/benchmark_result.py``
of its repository, 1e-5 to 1; its README shows ``if-cg`` best at 0.1 on ``lr``).

Speed. :meth:`DattriMnist.descend` (:func:`relu_mlp_descend`) trains ``K`` stacked models with hand-written forward and
backward passes (one matrix product over all ``K`` models for the first layer and its weight gradient, batched ones
after it), the same updates as :func:`benchmark.numerics.training.descend` to rounding (``tests/test_mnist_dattri.py``,
float64; in float32 the ``mlp`` rows do not depend on ``K`` bit for bit, the ``lr`` ones to 3e-8 after 200 steps).
Both the optimum (:meth:`DattriMnist.train_from`) and every model the harness trains from
:meth:`DattriMnist.initial_parameters` (:class:`benchmark.numerics.trajectory.TrainingRun`) go through it. Measured on
the real data, float32, one torch thread, on this project's 2-core machine while other jobs loaded it (load average
2.5-3.5), the best of three runs: milliseconds per model and SGD step, generic ``descend`` / ``relu_mlp_descend``, and
seconds per model of the full recipe (3,120 steps for ``lr``, 3,900 for ``mlp``):

=======  =============  =============  =============  =============  ====================
task     K = 1          K = 4          K = 16         K = 64         per model, best K
=======  =============  =============  =============  =============  ====================
lr       0.41 / 0.12    0.22 / 0.047   0.11 / 0.027   0.086 / 0.022  0.27 s / 0.07 s
mlp      1.01 / 0.61    0.80 / 0.47    0.73 / 0.50    0.72 / 0.54    2.8 s / 1.9 s
=======  =============  =============  =============  =============  ====================

So 200 models take about 1 min / 14 s (``lr``, K = 64) and 9.4 / 6.2 min (``mlp``, K = 16 / 4); one whole chunk
through the recipe, half subsets weighted 2, agrees: 64 ``lr`` models 16.4 s / 4.5 s, 16 ``mlp`` models 47.7 s /
31.9 s, 4 of them 7.4 s with the override. The ``mlp`` is bound by its first layer's two matrix products (26 MFLOP
per model and step at batch 64). With two threads on the same loaded machine every case ran 4-100x slower (OpenMP's
waiting threads), hence :attr:`DattriMnist.cpu_threads` = 1.

``smoke`` runs on generated images in memory (no files), in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from benchmark import BuildContext, Problem, Protocol, Recipe, Task, UsageError, hookimpl, non_negative, positive
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.training import minibatches
from tasks.datasets import data_dir, load_mnist

PIXELS = 28 * 28
CLASSES = 10

MODELS: dict[str, list[tuple[int, int]]] = {
    "lr": [(CLASSES, PIXELS)],
    "mlp": [(128, PIXELS), (64, 128), (CLASSES, 64)],
}
"""``(out_features, in_features)`` of each linear layer of dattri's two MNIST models, in order."""

DATTRI: dict[str, dict[str, Any]] = {
    "lr": {
        "train_size": 5000,
        "test_size": 500,
        "epochs": 20,
        "batch_size": 32,
        "lr": 0.01,
        "momentum": 0.0,
        "retrain_epochs": 20,
    },
    "mlp": {
        "train_size": 5000,
        "test_size": 500,
        "epochs": 50,
        "batch_size": 64,
        "lr": 0.01,
        "momentum": 0.9,
        "retrain_epochs": 3,
    },
}
"""dattri's recipe per model (the ``dattri`` preset), with this harness's re-training length."""

SMOKE: dict[str, Any] = {"train_size": 256, "test_size": 32, "epochs": 4, "retrain_epochs": 2}
"""What the ``smoke`` preset changes of :data:`DATTRI` (generated images in memory, seconds)."""

PRESETS = ("dattri", "smoke")

PRESET_FIELDS = ("train_size", "test_size", "epochs", "batch_size", "lr", "momentum", "retrain_epochs")
"""Config fields that a preset fills where the config leaves them at ``None``."""


@dataclasses.dataclass
class DattriConfig:
    """Configuration of ``mnist-lr`` and ``mnist-mlp`` (``--set mnist-lr.FIELD=VALUE``); a field left at ``None``
    takes the preset's value (:data:`DATTRI`), and every record holds the resolved values.

    Attributes:
        preset: ``dattri`` (real MNIST, dattri's sizes and recipe) or ``smoke`` (generated images in memory, a few
            epochs, for tests).
        weight_decay: L2 regulariser of the objective (dattri: none).
        train_size, test_size: the first this many training and test images (dattri: 5,000 and 500).
        epochs: passes over the training set to the optimum (dattri: 20 for ``lr``, 50 for ``mlp``).
        batch_size, lr, momentum: SGD (dattri: 32, 0.01, 0 for ``lr``; 64, 0.01, 0.9 for ``mlp``).
        retrain_epochs: leave-one-out re-training from the optimum, in epochs of the same SGD (``lr``: 20, ``mlp``:
            3; the module docstring says why).
        test_point: ``max-loss``, ``pNN`` (loss percentile) or a test index.
        eval_size: training points each selection scores (the paper's top 40).
        data_dir: where MNIST is (default ``$BENCH_DATA_DIR``, else ``~/.cache/bench/data``).
        download: let torchvision download missing data where the network allows.
    """

    preset: str = dataclasses.field(default="dattri", metadata={"choices": PRESETS})
    weight_decay: float = 0.0
    train_size: int | None = None
    test_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    retrain_epochs: int | None = None
    test_point: str | int = "max-loss"
    eval_size: int = 40
    data_dir: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (choices: {', '.join(PRESETS)})")
        non_negative(weight_decay=self.weight_decay)
        positive(eval_size=self.eval_size)
        for name in ("train_size", "test_size", "epochs", "batch_size", "lr", "retrain_epochs"):
            value = getattr(self, name)
            if value is not None:
                positive(**{name: value})
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")


class LogisticRegressionMnist(nn.Module):
    """dattri's ``LogisticRegressionMnist``: one linear layer on the flattened image (7,850 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(PIXELS, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class MLPMnist(nn.Module):
    """dattri's ``MLPMnist`` without its dropout: ``fc1 784->128, ReLU, fc2 128->64, ReLU, fc3 64->10`` (109,386
    parameters), with dattri's parameter names (its checkpoints load with ``load_state_dict``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


MODULES: dict[str, type[nn.Module]] = {"lr": LogisticRegressionMnist, "mlp": MLPMnist}


def generated_mnist(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Learnable generated digits, flattened and roughly normalised like MNIST: a fixed random template per class plus
    noise (the ``smoke`` preset's data)."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(CLASSES, PIXELS, generator=generator)
    labels = torch.randint(CLASSES, (n,), generator=generator)
    return templates[labels] + 0.5 * torch.randn(n, PIXELS, generator=generator), labels


def relu_mlp_descend(
    thetas: Tensor,
    shapes: Sequence[tuple[int, int]],
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    weight_decay: float | Tensor,
    recipe: Recipe,
    progress: bool = False,
    description: str = "training",
) -> Tensor:
    """Minibatch SGD on ``K`` stacked ReLU MLPs with cross-entropy (no hidden layer: multinomial logistic regression),
    forward and backward passes written out.

    The updates of :func:`benchmark.numerics.training.descend` (equal to rounding; ``tests/test_mnist_dattri.py``):
    the same minibatch sequence (:func:`benchmark.numerics.training.minibatches` of ``recipe``), model ``k``'s gradient
    of ``(1/B) sum_{i in batch} w_ki l_ki + (weight_decay_k / 2) ||theta_k||^2``, heavy-ball momentum as
    ``torch.optim.SGD``. The first layer of all ``K`` models is one matrix product over the shared minibatch, as is its
    weight gradient; the layers after it are batched products.

    Args:
        thetas: ``Tensor[K, P]`` starting points, laid out as ``parameters_to_vector`` lays out the layers (each
            layer's weight, row-major, then its bias).
        shapes: ``(out, in)`` of each linear layer; ReLU after every layer but the last.
        x: inputs, ``Tensor[n, d]`` shared by all models, or ``Tensor[K, n, d]`` one set per model (e.g. each model's
            own training subset, all of one size).
        y: class labels, ``Tensor[n]`` or ``Tensor[K, n]``.
        weights: ``Tensor[K, n]`` example weights per model (0 removes an example).
        weight_decay: one value, or ``Tensor[K]`` one per model.
        recipe: steps, learning rate, batch size (``None``: full batch), momentum, minibatch seed.
        progress: show a progress bar.

    Returns:
        ``Tensor[K, P]``, the parameters after ``recipe.steps`` updates.
    """
    models, total = thetas.shape
    dtype, device = thetas.dtype, thetas.device
    shared = x.dim() == 2
    n = x.shape[-2]
    if x.shape[-1] != shapes[0][1] or (not shared and x.shape[0] != models) or weights.shape != (models, n):
        raise ValueError(
            f"x of shape {tuple(x.shape)} and weights of shape {tuple(weights.shape)} do not fit {models} models "
            f"of input size {shapes[0][1]}"
        )
    params: list[Tensor] = []
    start = 0
    for out_features, in_features in shapes:
        size = out_features * in_features
        params.append(thetas[:, start : start + size].reshape(models, out_features, in_features).clone())
        params.append(thetas[:, start + size : start + size + out_features].clone())
        start += size + out_features
    if start != total:
        raise ValueError(f"shapes {list(shapes)} hold {start} parameters, thetas have {total}")
    inputs = x.to(dtype=dtype, device=device)
    onehot = nn.functional.one_hot(y.to(device), shapes[-1][0]).to(dtype)
    weights = weights.to(dtype=dtype, device=device)
    decays: list[float | Tensor]
    if isinstance(weight_decay, Tensor):
        decay = weight_decay.to(dtype=dtype, device=device).reshape(models)
        decays = [decay.view(models, *([1] * (p.dim() - 1))) for p in params]
    else:
        decays = [float(weight_decay)] * len(params)
    velocity = [torch.zeros_like(p) for p in params] if recipe.momentum else None
    last = len(shapes) - 1
    bar = tqdm(total=recipe.steps, desc=description, disable=not progress, leave=False, mininterval=0.5, unit="step")
    every = max(1, recipe.steps // 200)
    for step, batch in enumerate(minibatches(recipe, n, device), start=1):
        if batch is None:
            xb, ob, wb = inputs, onehot, weights
        elif shared:
            xb, ob, wb = inputs[batch], onehot[batch], weights[:, batch]
        else:
            xb, ob, wb = inputs[:, batch], onehot[:, batch], weights[:, batch]
        size = wb.shape[1]
        # forward: activations [K, B, features]; the shared first layer as one [B, d] x [d, K * out] product
        activations = [xb]
        a = xb
        for index in range(last + 1):
            weight, bias = params[2 * index], params[2 * index + 1]
            if index == 0 and shared:
                z = torch.addmm(bias.reshape(-1), a, weight.view(-1, weight.shape[2]).t())
                z = z.view(size, models, -1).transpose(0, 1)
            else:
                z = torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2))
            a = torch.relu(z) if index < last else z
            activations.append(a)
        delta = (torch.softmax(a, 2) - ob).mul_((wb / size).unsqueeze(2))
        gradients: list[Tensor] = [torch.empty(0)] * len(params)
        for index in range(last, -1, -1):
            previous = activations[index]
            gradients[2 * index + 1] = delta.sum(1)
            if index == 0 and shared:
                flat = delta.transpose(0, 1).reshape(size, -1)
                gradients[0] = torch.mm(flat.t(), previous).view_as(params[0])
            else:
                gradients[2 * index] = torch.bmm(delta.transpose(1, 2), previous)
            if index:
                delta = torch.ops.aten.threshold_backward(torch.bmm(delta, params[2 * index]), previous, 0)
        for gradient, parameter, decay in zip(gradients, params, decays):
            if isinstance(decay, Tensor):
                gradient.addcmul_(parameter, decay)
            elif decay:
                gradient.add_(parameter, alpha=decay)
        if velocity is not None:
            torch._foreach_mul_(velocity, recipe.momentum)
            torch._foreach_add_(velocity, gradients)
            gradients = velocity
        torch._foreach_add_(params, gradients, alpha=-recipe.lr)
        if step % every == 0 or step == recipe.steps:
            bar.update(step - bar.n)
    bar.close()
    return torch.cat([p.reshape(models, -1) for p in params], 1)


DATTRI_LDS: dict[str, dict[str, tuple[float, str] | tuple[float, str, dict[str, Any]]]] = {
    "mnist-lr": {
        "exact": (0.80, "dattri, explicit"),
        "cg": (0.80, "dattri"),
        "lissa": (0.79, "dattri"),
        "arnoldi": (0.31, "dattri"),
        "first-order": (0.33, "dattri, grad-dot"),
        "trak": (0.68, "dattri, TRAK-50", {"models": 50}),
    },
    "mnist-mlp": {
        "cg": (0.26, "dattri"),
        "lissa": (0.14, "dattri"),
        "trak": (0.45, "dattri, TRAK-50", {"models": 50}),
    },
}
"""The linear datamodeling scores dattri publishes for these settings (Deng et al., NeurIPS 2024, its benchmark bar
charts; read off the charts, so approximate to about 0.01-0.02): task -> our estimator name -> (score, source). Its
``TRAK-50`` averages 50 models: the reference of our ``trak`` with ``models=50`` only (the third element: the
hyperparameters a reference holds for); its ``grad-dot`` is our ``first-order``."""


class DattriMnist(Task):
    """Shared code of :class:`MnistLR` and :class:`MnistMLP` (module docstring: dattri's recipe and the differences)."""

    Config = DattriConfig
    protocol_fields = ("retrain_epochs", "test_point", "eval_size", "data_dir", "download")
    model: ClassVar[str]
    parameter_change = False  # the MLP: one CG or LiSSA solve per scored point at 109,386 parameters
    cpu_threads = 1  # two threads ran 4-100x slower on a loaded 2-core machine (module docstring)

    def __init__(self, config: DattriConfig | None = None):
        config = config or DattriConfig()
        preset = dict(DATTRI[self.model])
        if config.preset == "smoke":
            preset.update(SMOKE)
        super().__init__(
            dataclasses.replace(config, **{k: preset[k] for k in PRESET_FIELDS if getattr(config, k) is None})
        )

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of the model's linear layers."""
        return MODELS[self.model]

    @classmethod
    def models(cls) -> dict[str, int]:
        return {cls.model: sum(p.numel() for p in MODULES[cls.model]().parameters())}

    def data(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``x_train, y_train, x_test, y_test``: the first ``train_size`` and ``test_size`` images, flattened to
        ``float32 [N, 784]``, or the ``smoke`` preset's generated ones (the same for every seed)."""
        c = self.config
        if c.preset == "smoke":
            x, y = generated_mnist(c.train_size + c.test_size)
            return x[: c.train_size], y[: c.train_size], x[c.train_size :], y[c.train_size :]
        root = data_dir(c.data_dir)
        x_train, y_train, x_test, y_test = load_mnist(root, c.download)
        for field, size, found in (("train_size", c.train_size, len(x_train)), ("test_size", c.test_size, len(x_test))):
            if size > found:
                raise UsageError(f"{self.name}.{field}={size} exceeds the {found} images of MNIST in {root}")
        return (
            x_train[: c.train_size].flatten(1).contiguous(),
            y_train[: c.train_size].clone(),
            x_test[: c.test_size].flatten(1).contiguous(),
            y_test[: c.test_size].clone(),
        )

    def _initial_module(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # as dattri's train_mnist_*: the seed, then the model
            return MODULES[self.model]()

    def initial_parameters(self, seed: int) -> Tensor:
        return nn.utils.parameters_to_vector(self._initial_module(seed).parameters()).detach()

    def steps_per_epoch(self, n_train: int) -> int:
        """Minibatches per epoch: full batches only (:func:`benchmark.numerics.training.minibatches` drops the rest)."""
        return max(1, n_train // self.config.batch_size)

    def train_recipe(self, n_train: int, seed: int) -> Recipe:
        """dattri's SGD for ``epochs`` epochs, the minibatch order drawn from ``seed``."""
        c = self.config
        return Recipe(
            steps=c.epochs * self.steps_per_epoch(n_train),
            lr=c.lr,
            batch_size=c.batch_size,
            momentum=c.momentum,
            seed=seed,
        )

    def initial_problem(self, seed: int) -> Problem:
        """The problem at its initialisation (:meth:`initial_parameters` of ``seed``)."""
        x_train, y_train, x_test, y_test = self.data()
        return Problem.from_module(
            self._initial_module(seed),
            cross_entropy,
            x_train,
            y_train,
            x_test,
            y_test,
            self.config.weight_decay,
            loss_module=nn.CrossEntropyLoss(),
        )

    def build(self, context: BuildContext) -> Problem:
        problem = self.initial_problem(context.seed).to(device=context.device)
        return self.trained(problem, self.train_recipe(problem.n_train, context.seed), context)

    def train_from(self, problem: Problem, recipe: Recipe, progress: bool = False) -> Tensor:
        """Training by :meth:`descend`, so that the optimum is what the same code trains for other seeds."""
        weights = torch.ones(1, problem.n_train, dtype=problem.dtype, device=problem.device)
        return self.descend(problem, problem.theta.unsqueeze(0), weights, recipe, progress, "training optimum")[0]

    def descend(
        self,
        problem: Problem,
        thetas: Tensor,
        weights: Tensor,
        recipe: Recipe,
        progress: bool = False,
        description: str = "training",
    ) -> Tensor:
        """:func:`benchmark.numerics.training.descend` for this task's problems, by :func:`relu_mlp_descend`."""
        return relu_mlp_descend(
            thetas,
            self.shapes,
            problem.x_train,
            problem.y_train,
            weights,
            problem.weight_decay,
            recipe,
            progress,
            description,
        )

    def protocol(self) -> Protocol:
        """Test point, top k, leave-one-out re-training for ``retrain_epochs`` epochs of the training SGD from the
        optimum, at the damping of that horizon (module docstring)."""
        c = self.config
        steps = c.retrain_epochs * self.steps_per_epoch(c.train_size)
        horizon = steps * c.lr / (1 - c.momentum)
        return Protocol(
            test_point=c.test_point,
            eval_size=c.eval_size,
            retrain=Recipe(steps=steps, lr=c.lr, batch_size=c.batch_size, momentum=c.momentum),
            damping=float(f"{1 / horizon:.2g}"),
        )

    def paper_reference(self, estimator: str, selection: str) -> dict[str, Any] | None:
        """dattri's published linear datamodeling score for ``estimator`` (:data:`DATTRI_LDS`), on selection ``lds``
        at dattri's sizes (the ``dattri`` preset, no weight decay); ``None`` elsewhere."""
        c = self.config
        if selection != "lds" or c.preset != "dattri" or c.weight_decay or (c.train_size, c.test_size) != (5000, 500):
            return None
        found = DATTRI_LDS[self.name].get(estimator)
        if found is None:
            return None
        reference: dict[str, Any] = {"spearman": found[0], "source": found[1]}
        if len(found) > 2:
            reference["when"] = found[2]
        return reference

    def diagnostics(self, problem: Problem) -> dict[str, Any]:
        """Training and test accuracy of the optimum (dattri reports none; a check that training did what it should)."""
        with torch.no_grad():
            return {
                split: float((problem.model(problem.params, x).argmax(1) == y).float().mean())
                for split, x, y in (
                    ("train_accuracy", problem.x_train, problem.y_train),
                    ("test_accuracy", problem.x_test, problem.y_test),
                )
            }


class MnistLR(DattriMnist):
    """dattri's MNIST-10 logistic regression (784x10 + bias), 5,000 training and 500 test images, SGD as dattri."""

    name = "mnist-lr"
    version = 1
    model = "lr"
    parameter_change = True  # one iHVP per scored point: cheap at 7,850 parameters


class MnistMLP(DattriMnist):
    """dattri's MNIST-10 MLP (784-128-64-10, ReLU, no dropout), 5,000 training and 500 test images, SGD as dattri."""

    name = "mnist-mlp"
    version = 1
    model = "mlp"


@hookimpl
def bench_tasks() -> list[type[Task]]:
    return [MnistLR, MnistMLP]
