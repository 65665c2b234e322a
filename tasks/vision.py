"""``mnist`` and ``cifar``: the paper's sections 5.2 and 5.3 (Table 1) on real MNIST and CIFAR-10.

Presets size a run: ``smoke`` (generated images in memory, seconds, for tests), ``cpu`` (real data, reduced sizes
and steps for a 2-core CPU) and ``paper`` (the full training sets, for a GPU). A field left at ``None`` takes the
preset's value; every record holds the preset and the fully resolved config. Test point A is ``max-loss``, B is
``p50``; the top 40 training points by |estimated influence| are re-trained for 6% of the training steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from benchmark import (
    BuildContext,
    Polish,
    Problem,
    Protocol,
    Recipe,
    ReferenceRow,
    Task,
    hookimpl,
    non_negative,
    positive,
)
from benchmark.numerics.losses import cross_entropy
from tasks import shipped_studies
from tasks.datasets import data_dir, load_cifar10, load_mnist, subset
from tasks.models import MODELS, build_model, count_parameters

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "train_size": 128,
        "test_size": 32,
        "train_steps": 60,
        "polish_steps": 10,
        "batch_size": 32,
        "lr": 0.05,
        "momentum": 0.9,
        "lbfgs_steps": 200,
    },
    "cpu": {
        "train_size": 5500,
        "test_size": 1000,
        "train_steps": 4000,
        "polish_steps": 1000,
        "batch_size": 128,
        "lr": 0.05,
        "momentum": 0.9,
        "lbfgs_steps": 5000,
    },
    "paper": {
        "train_size": None,
        "test_size": None,
        "train_steps": 30000,
        "polish_steps": 5000,
        "batch_size": 128,
        "lr": 0.05,
        "momentum": 0.9,
        "lbfgs_steps": 5000,
    },
}
"""Values of the fields a config leaves at ``None``; ``None`` here means the whole set."""

LBFGS_FIELDS = ("lbfgs_steps", "lbfgs_tol", "lbfgs_dtype")
"""Config fields of the final L-BFGS phase: the SGD optimum before it is cached under a key without them (and under
task version 2, the version whose optima had no such phase, so those stay valid)."""

TABLE1: dict[tuple[str, str, str, bool], tuple[float, float]] = {
    (dataset, model, point, wd): (pearson, spearman)
    for dataset, rows in {
        "mnist": {
            "small-cnn": (0.95, 0.87, 0.92, 0.82, 0.41, 0.35),
            "lenet": (0.83, 0.51, 0.28, 0.29, 0.18, 0.12),
            "vgg13": (0.34, 0.44, 0.29, 0.18, 0.38, 0.31),
            "vgg14": (0.32, 0.26, 0.28, 0.22, 0.21, 0.11),
            "resnet18": (0.49, 0.26, 0.39, 0.35, 0.14, 0.11),
            "resnet50": (0.24, 0.22, 0.29, 0.19, 0.08, 0.13),
        },
        "cifar": {
            "lenet": (0.81, 0.69, 0.45, 0.46, 0.19, 0.09),
            "vgg13": (0.67, 0.63, 0.66, 0.63, 0.79, 0.73),
            "vgg14": (0.61, 0.59, 0.49, 0.41, 0.75, 0.64),
            "resnet18": (0.64, 0.42, 0.25, 0.26, 0.72, 0.69),
            "resnet50": (0.46, 0.36, 0.24, 0.09, 0.32, 0.14),
        },
    }.items()
    for model, values in rows.items()
    for (point, wd), (pearson, spearman) in zip(
        (("max-loss", True), ("p50", True), ("max-loss", False)), zip(values[::2], values[1::2])
    )
}
"""The paper's Table 1: (task, model, test point, with weight decay) -> (Pearson, Spearman)."""


@dataclasses.dataclass
class VisionConfig:
    """Configuration of the MNIST and CIFAR-10 tasks.

    Attributes:
        preset: ``smoke``, ``cpu`` or ``paper`` (see :data:`PRESETS`).
        model: one of :data:`tasks.models.MODELS`.
        weight_decay: L2 regulariser of the objective (paper: 0.001, or 0 for "without weight decay").
        train_size, test_size: random subsets of the sets (``None`` in a preset: all of it).
        train_steps, batch_size, lr, momentum: SGD to the optimum.
        polish_steps: then this many steps at ``lr / 10`` and as many at ``lr / 100``. Constant-rate SGD ends far
            from a stationary point (CG then meets negative curvature); the two phases bring it closer.
        lbfgs_steps: then at most this many full-batch L-BFGS iterations on the whole objective
            (:class:`~benchmark.Polish`, checkpointed: an interrupted polish resumes), to a gradient norm
            of ``lbfgs_tol``: a stationary point, which the influence function assumes and lower-rate SGD alone does not
            reach (0: none). The optimum before this phase is cached on its own, so a run with ``lbfgs_steps=0`` shows
            what the phase changes (``leaderboards/stationarity.md``). Its checkpoints are keyed without
            ``lbfgs_steps`` and ``lbfgs_tol``, so a run with more steps resumes where a shorter one stopped.
        lbfgs_tol: the gradient norm at which L-BFGS stops (ten times below the runner's convergence check).
        lbfgs_dtype: the precision of the L-BFGS phase, and so of the optimum and everything evaluated on it:
            ``float32`` (SGD's) or ``float64``. In float32 the polish stops at the objective's rounding floor, which
            on the weight-decay optima lies above the runner's convergence check; float64 has a far lower floor, for
            more time per step (on a CPU float64 convolutions take slower fallbacks). Part of the cache key only when
            ``float64``.
        retrain_fraction: leave-one-out re-training steps as a share of all training steps (paper: 6%), at ``lr``.
        test_point: ``max-loss`` (the paper's A), ``p50`` (B), another ``pNN`` or an index.
        eval_size: training points per selection (paper: the top 40).
        data_dir: where the data sets are (default ``$BENCH_DATA_DIR``, else ``~/.cache/bench/data``).
        download: let torchvision download missing data where the network allows.
    """

    preset: str = dataclasses.field(default="cpu", metadata={"choices": tuple(PRESETS)})
    model: str = dataclasses.field(default="small-cnn", metadata={"choices": MODELS})
    weight_decay: float = 0.001
    train_size: int | None = None
    test_size: int | None = None
    train_steps: int | None = None
    polish_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    lbfgs_steps: int | None = None
    lbfgs_tol: float = 1e-5
    lbfgs_dtype: str = dataclasses.field(default="float32", metadata={"choices": ("float32", "float64")})
    retrain_fraction: float = 0.06
    test_point: str | int = "max-loss"
    eval_size: int = 40
    data_dir: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        non_negative(weight_decay=self.weight_decay)
        positive(retrain_fraction=self.retrain_fraction, eval_size=self.eval_size)
        for name in ("train_size", "test_size", "train_steps", "batch_size", "lr"):
            value = getattr(self, name)
            if value is not None:
                positive(**{name: value})
        if self.polish_steps is not None:
            non_negative(polish_steps=self.polish_steps)
        if self.lbfgs_steps is not None:
            non_negative(lbfgs_steps=self.lbfgs_steps)
        positive(lbfgs_tol=self.lbfgs_tol)
        if self.momentum is not None:
            non_negative(momentum=self.momentum)


def synthetic_images(n: int, channels: int, size: int, seed: int, classes: int = 10) -> tuple[Tensor, Tensor]:
    """Generated, learnable images: a fixed random template per class plus noise (the ``smoke`` preset's data)."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, channels, size, size, generator=generator)
    labels = torch.randint(classes, (n,), generator=generator)
    images = templates[labels] + 0.5 * torch.randn(n, channels, size, size, generator=generator)
    return images, labels


class VisionTask(Task):
    """Shared code of :class:`Mnist` and :class:`Cifar`."""

    Config = VisionConfig
    protocol_fields = ("retrain_fraction", "test_point", "eval_size", "data_dir", "download")
    keyed_when_set = ("lbfgs_dtype",)
    channels: ClassVar[int]
    image_size: ClassVar[int]
    parameter_change = False
    cpu_threads = 1
    chunk_size: ClassVar[int] = 8192
    """Training images per full-data pass (HVPs, gradient products): bounds the activations held at once."""

    def __init__(self, config: VisionConfig | None = None):
        config = config or VisionConfig()
        preset = PRESETS[config.preset]
        super().__init__(dataclasses.replace(config, **{k: v for k, v in preset.items() if getattr(config, k) is None}))

    @classmethod
    def models(cls) -> dict[str, int]:
        return {name: count_parameters(build_model(name, cls.channels, cls.image_size)) for name in MODELS}

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The full training and test sets (images normalised, ``[N, C, H, W]``)."""
        raise NotImplementedError

    def _data(self, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = self.config
        if c.preset == "smoke":
            x, y = synthetic_images(c.train_size + c.test_size, self.channels, self.image_size, seed)
            return x[: c.train_size], y[: c.train_size], x[c.train_size :], y[c.train_size :]
        x_train, y_train, x_test, y_test = self.load()
        if c.train_size is not None and c.train_size < len(x_train):
            x_train, y_train = subset(x_train, y_train, c.train_size, seed)
        if c.test_size is not None and c.test_size < len(x_test):
            x_test, y_test = subset(x_test, y_test, c.test_size, seed)
        return x_train, y_train, x_test, y_test

    def untrained(self, seed: int) -> Problem:
        """The problem at its initial parameters (seed ``seed``), before any training: what :meth:`build` trains, and
        what ``scripts/paper_cost.py`` times a stage on."""
        c = self.config
        x_train, y_train, x_test, y_test = self._data(seed)
        module = self._initial_module(seed)
        return Problem.from_module(
            module,
            cross_entropy,
            x_train,
            y_train,
            x_test,
            y_test,
            c.weight_decay,
            self.chunk_size,
            loss_module=torch.nn.CrossEntropyLoss(),
        )

    def build(self, context: BuildContext) -> Problem:
        c = self.config
        problem = self.untrained(context.seed)
        phases = [Recipe(steps=c.train_steps, lr=c.lr, batch_size=c.batch_size, momentum=c.momentum, seed=context.seed)]
        phases += [
            Recipe(
                steps=c.polish_steps,
                lr=c.lr * factor,
                batch_size=c.batch_size,
                momentum=c.momentum,
                seed=context.seed + i + 1,
            )
            for i, factor in enumerate((0.1, 0.01))
            if c.polish_steps
        ]
        optimum = self.trained(problem.to(device=context.device), phases, context, key=self._sgd_key(context.seed))
        if not c.lbfgs_steps:
            return optimum
        polish = Polish(max_steps=c.lbfgs_steps, gradient_tol=c.lbfgs_tol)
        if c.lbfgs_dtype != "float32":
            optimum = optimum.to(dtype=getattr(torch, c.lbfgs_dtype))
        return self.trained(optimum, polish, context, checkpoint_key=self.polish_checkpoints(context.seed))

    def _sgd_key(self, seed: int) -> dict[str, Any]:
        """The cache key of the optimum before the L-BFGS phase (without its fields)."""
        key = self.problem_key(seed)
        return {**key, "version": 2, "config": {k: v for k, v in key["config"].items() if k not in LBFGS_FIELDS}}

    def polish_checkpoints(self, seed: int) -> dict[str, Any]:
        """The cache key of the L-BFGS phase's checkpoints (``polish-checkpoints``), without the ``phase`` (0) and
        ``step`` that :meth:`~benchmark.Task.trained` and :func:`~benchmark.numerics.training.polish` add: what the
        iterates depend on (the SGD optimum, the L-BFGS memory and precision), not the stopping rule."""
        checkpoints = {**self._sgd_key(seed), "polish": "lbfgs", "history": Polish.history}
        if self.config.lbfgs_dtype != "float32":
            checkpoints["dtype"] = self.config.lbfgs_dtype
        return checkpoints

    def _initial_module(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(self.config.model, self.channels, self.image_size)

    def initial_parameters(self, seed: int) -> Tensor:
        return torch.nn.utils.parameters_to_vector(self._initial_module(seed).parameters()).detach()

    def protocol(self) -> Protocol:
        """Test point, top k and leave-one-out re-training (``retrain_fraction`` of the training steps, from the
        optimum); estimators that declare a damping evaluate at 0.01 unless the run sets theirs."""
        c = self.config
        steps = max(1, round(c.retrain_fraction * (c.train_steps + 2 * c.polish_steps)))
        return Protocol(
            test_point=c.test_point,
            eval_size=c.eval_size,
            retrain=Recipe(steps=steps, lr=c.lr, batch_size=c.batch_size, momentum=c.momentum),
            damping=0.01,  # Koh & Liang's, and what the paper's Table 1 settings are run at
        )

    @classmethod
    def reference_rows(cls) -> list[ReferenceRow]:
        rows = []
        for (task, model, point, with_decay), (pearson, spearman) in TABLE1.items():
            if task != cls.name:
                continue
            decay = 0.001 if with_decay else 0.0
            label = f"{model}, test point {'A' if point == 'max-loss' else 'B'}, " + (
                "with weight decay" if with_decay else "without weight decay"
            )
            command = (
                f"bench run --task {task} --device cuda --gt-seeds 2 --selection top --set {task}.preset=paper "
                f"--set {task}.model={model} --set {task}.test_point={point} --set {task}.weight_decay={decay} "
                "--set cg.damping=0.01 --set lissa.damping=0.01"
            )
            rows.append(
                ReferenceRow(
                    label,
                    {"model": model, "test_point": point, "weight_decay": decay},
                    {"pearson": pearson, "spearman": spearman},
                    command,
                )
            )
        return rows

    def paper_reference(self, estimator: str, selection: str) -> dict[str, float] | None:
        c = self.config
        key = (self.name, c.model, c.test_point, c.weight_decay > 0)
        if selection != "top" or key not in TABLE1 or c.eval_size != 40 or c.retrain_fraction != 0.06:
            return None
        pearson, spearman = TABLE1[key]
        return {"pearson": pearson, "spearman": spearman}


class Mnist(VisionTask):
    """MNIST (28x28x1): the six architectures of Table 1; the small CNN on small MNIST (section 5.2)."""

    name = "mnist"
    version = 3  # 2: polished by two lower-rate SGD phases; 3: and by full-batch L-BFGS to a stationary point
    channels, image_size = 1, 28

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return load_mnist(data_dir(self.config.data_dir), self.config.download)


@dataclasses.dataclass
class CifarConfig(VisionConfig):
    """As :class:`VisionConfig`, LeNet by default (the paper did not evaluate the small CNN on CIFAR-10)."""

    model: str = dataclasses.field(default="lenet", metadata={"choices": MODELS})


class Cifar(VisionTask):
    """CIFAR-10 (32x32x3): the architectures of Table 1 (the small CNN too, though the paper skipped it)."""

    name = "cifar"
    version = 3  # 2: polished by two lower-rate SGD phases; 3: and by full-batch L-BFGS to a stationary point
    Config = CifarConfig
    channels, image_size = 3, 32

    def __init__(self, config: CifarConfig | None = None):
        super().__init__(config or CifarConfig())

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return load_cifar10(data_dir(self.config.data_dir), self.config.download)


@hookimpl
def bench_tasks() -> list[type[Task]]:
    return [Mnist, Cifar]


@hookimpl
def bench_studies() -> list[Path]:
    """The MNIST studies (test points, weight decay), shipped with this plugin."""
    return shipped_studies("mnist-")
