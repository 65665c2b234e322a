"""``imagenet``: the paper's section 5.4 and appendix D, ResNet-50 on ImageNet.

The optimum is a torchvision ResNet-50 trained by the task (a short one-cycle SGD recipe with augmentation; mixed
precision and channels-last on CUDA; cached on disk) or loaded from ``checkpoint`` (a torchvision weights file or a
training checkpoint, read with ``torch.load(weights_only=True)``). Images are streamed from disk
(:mod:`tasks.imagenet_data`, :class:`tasks.imagenet_problem.StreamedProblem`), so the influence of every training
point is computed in batches. Test points are chosen by loss percentile (paper: ``p83`` and ``p37``); the top 50 by
|estimated influence| are re-trained from the optimum for ``retrain_epochs`` (paper: 2) by the ground-truth engine.

**BatchNorm.** Influence functions need the loss of each example to depend on that example alone, so the problem's
functional model runs BatchNorm in evaluation mode, normalising with the running statistics of the optimum; the
objective whose Hessian the estimators invert is the loss of that fixed network. Leave-one-out re-training keeps the
same frozen statistics: in training mode a removed point would still shift the statistics of the minibatches it sits
in (the engine masks a removed point by a zero weight, it does not drop it from the batch), and the re-trained
models would optimise a different objective from the one the estimates are about. Only the optimum's own training
from scratch runs BatchNorm in training mode, which produces the running statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark import (
    BuildContext,
    DataError,
    Problem,
    Protocol,
    Recipe,
    Task,
    UsageError,
    hookimpl,
    non_negative,
    positive,
)
from benchmark.numerics.losses import cross_entropy
from tasks.datasets import data_dir, subset_indices
from tasks.imagenet_data import LAYOUTS, ImageFiles, ImageRows, eval_transform, image_list, train_transform
from tasks.imagenet_problem import StreamedProblem, batch_gradient_check, epochs_to_steps

log = logging.getLogger("bench")

ARCHITECTURES = ("resnet50", "resnet18")
"""torchvision ResNets the task builds; ``resnet50`` is the paper's (``resnet18`` makes tests and CPU runs cheaper)."""


@dataclasses.dataclass
class ImageNetConfig:
    """Configuration of the ImageNet task (``--set imagenet.FIELD=VALUE``).

    Attributes:
        data_dir: the ImageNet root (default ``$BENCH_DATA_DIR/imagenet``, else ``~/.cache/bench/data/imagenet``);
            layouts in :mod:`tasks.imagenet_data`.
        layout: ``auto``, ``folder`` (``train/`` and ``val/`` ImageFolder trees) or ``imagenet`` (torchvision's).
        num_classes: the first ``num_classes`` classes in sorted order (ImageNet: 1000); the model has that many
            outputs (a 1000-class checkpoint keeps the rows of those classes).
        max_train_points, max_test_points: class-stratified seeded subsets of the training and validation images
            (``None``: all of them).
        image_size: side of the centre crop fed to the network (224 as in the paper; small for tests).
        arch: ``resnet50`` (the paper's) or ``resnet18``.
        checkpoint: a state dict to start from instead of training (a torchvision weights file counts).
        weight_decay: L2 regulariser of the objective and of the training (torchvision's recipe: 1e-4).
        train_epochs, batch_size, lr, momentum, augment: the optimum's training (when no checkpoint): one-cycle SGD
            (linear warm-up over the first 2% of steps to ``lr``, then linear decay to 0), Nesterov momentum,
            random resized crops and flips when ``augment``.
        test_point: ``p83`` (the paper's first point), ``p37`` (its second), another ``pNN``, ``max-loss`` or an index.
        eval_size: training points per selection (paper: the top 50).
        retrain_epochs, retrain_lr, retrain_batch_size, retrain_momentum: leave-one-out re-training from the optimum
            (paper: 2 epochs, about 5% of the original training).
        chunk_size: images per batch of a streamed full pass (influence, Hessian-vector products).
        workers: ``DataLoader`` worker processes (``None``: 0 on a CPU, ``min(8, cpu count)`` on CUDA).
        noise_batches: minibatches of 128 for the gradient-norm noise check (``None``: one epoch).
    """

    data_dir: str | None = None
    layout: str = dataclasses.field(default="auto", metadata={"choices": LAYOUTS})
    num_classes: int = 1000
    max_train_points: int | None = None
    max_test_points: int | None = None
    image_size: int = 224
    arch: str = dataclasses.field(default="resnet50", metadata={"choices": ARCHITECTURES})
    checkpoint: str | None = None
    weight_decay: float = 1e-4
    train_epochs: float = 16.0
    batch_size: int = 256
    lr: float = 0.4
    momentum: float = 0.9
    augment: bool = True
    test_point: str | int = "p83"
    eval_size: int = 50
    retrain_epochs: float = 2.0
    retrain_lr: float = 0.001
    retrain_batch_size: int = 128
    retrain_momentum: float = 0.9
    chunk_size: int = 256
    workers: int | None = None
    noise_batches: int | None = None

    def __post_init__(self) -> None:
        positive(
            num_classes=self.num_classes,
            image_size=self.image_size,
            train_epochs=self.train_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            eval_size=self.eval_size,
            retrain_epochs=self.retrain_epochs,
            retrain_lr=self.retrain_lr,
            retrain_batch_size=self.retrain_batch_size,
            chunk_size=self.chunk_size,
        )
        non_negative(weight_decay=self.weight_decay, momentum=self.momentum, retrain_momentum=self.retrain_momentum)
        for name in ("max_train_points", "max_test_points", "noise_batches"):
            if getattr(self, name) is not None:
                positive(**{name: getattr(self, name)})
        if self.workers is not None:
            non_negative(workers=self.workers)


def build_network(arch: str, num_classes: int) -> torch.nn.Module:
    """A freshly initialised torchvision ResNet (``arch`` in :data:`ARCHITECTURES`) with ``num_classes`` outputs."""
    from torchvision import models

    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    return getattr(models, arch)(num_classes=num_classes)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | Path, module: torch.nn.Module, classes: list[int]) -> None:
    """Load a state dict into ``module`` with ``torch.load(weights_only=True)`` (no code is executed).

    Accepts a plain state dict (torchvision's weights files) or a training checkpoint holding one under
    ``state_dict``, ``model`` or ``model_state_dict``; a ``module.`` prefix (DistributedDataParallel) is stripped. A
    classifier with more outputs than ``module`` keeps the rows of ``classes`` (the class subset's original indices).

    Raises:
        DataError: the file is missing, unreadable, not a state dict, or does not fit the architecture.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad or unsafe file
        reason = " ".join(str(error).split())
        raise DataError(f"cannot load checkpoint {path} with weights_only=True: {reason}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"checkpoint {path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = module.state_dict()
    for name in ("fc.weight", "fc.bias"):
        if name in state and name in expected and state[name].shape[0] > expected[name].shape[0]:
            state[name] = state[name][torch.as_tensor(classes)]
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise DataError(
            f"checkpoint {path} does not fit {type(module).__name__} with {len(classes)} classes: "
            f"{' '.join(str(error).split())[:400]}"
        ) from None


def train_network(
    module: torch.nn.Module,
    files: ImageFiles,
    config: ImageNetConfig,
    device: torch.device,
    workers: int,
    seed: int,
    progress: bool,
) -> None:
    """Train ``module`` in place with the task's recipe (:class:`ImageNetConfig`): BatchNorm in training mode,
    bfloat16 autocast and channels-last on CUDA, objective ``mean cross-entropy + (weight_decay/2)||theta||^2``.
    Leaves the module in training mode (:func:`recalibrate_batchnorm` follows)."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        files,
        batch_size=min(config.batch_size, len(files)),
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    steps = max(1, math.ceil(config.train_epochs * len(loader)))
    warmup = max(1, round(0.02 * steps))
    cuda = device.type == "cuda"
    if cuda:
        module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        module.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    )
    module.train()
    bar = tqdm(total=steps, desc="training optimum", disable=not progress, leave=False, mininterval=0.5, unit="step")
    step = 0
    while step < steps:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = cross_entropy(module(x).float(), y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update()
            if step == steps:
                break
    bar.close()
    module.to(memory_format=torch.contiguous_format)


def recalibrate_batchnorm(
    module: torch.nn.Module,
    files: ImageFiles,
    device: torch.device,
    workers: int,
    batch_size: int,
    max_batches: int = 200,
) -> None:
    """Replace BatchNorm's running statistics by their average over up to ``max_batches`` training batches at the
    final parameters, then switch to evaluation mode.

    The running statistics are what the influence objective normalises with (see the module docstring); after a
    short recipe their exponential average still remembers early parameters, and the network they define can be
    far worse than the trained one. Averaging at the final parameters ("precise BatchNorm") removes that gap. Small
    batches give biased variances where feature maps are small (1x1 in ``layer4`` at 16-pixel inputs, 7x7 at 224),
    so the batches here are as large as a streamed pass's.
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    loader = torch.utils.data.DataLoader(
        files,
        batch_size=min(batch_size, len(files)),
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    module.train()
    with torch.no_grad():
        for b, (x, _) in enumerate(loader):
            if b == max_batches:
                break
            module(x.to(device, non_blocking=True))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    module.eval()


class ImageNet(Task):
    """ResNet-50 on ImageNet (section 5.4): see the module docstring for the protocol and BatchNorm."""

    name = "imagenet"
    version = 1
    Config = ImageNetConfig
    protocol_fields = (
        "data_dir",
        "layout",
        "checkpoint",
        "test_point",
        "eval_size",
        "retrain_epochs",
        "retrain_lr",
        "retrain_batch_size",
        "retrain_momentum",
        "chunk_size",
        "workers",
        "noise_batches",
    )
    parameter_change = False
    _n_train: int | None = None

    def __init__(self, config: ImageNetConfig | None = None):
        super().__init__(config or ImageNetConfig())

    @classmethod
    def models(cls) -> dict[str, int]:
        return {arch: sum(p.numel() for p in build_network(arch, 1000).parameters()) for arch in ARCHITECTURES}

    def root(self) -> Path:
        """The ImageNet root directory."""
        return Path(self.config.data_dir).expanduser() if self.config.data_dir else data_dir() / "imagenet"

    def problem_key(self, seed: int) -> dict[str, Any]:
        key = super().problem_key(seed)
        if self.config.checkpoint is not None:  # the file's content, not its path, determines the optimum
            key["checkpoint_sha256"] = file_sha256(Path(self.config.checkpoint).expanduser())
        return key

    def workers(self, device: torch.device) -> int:
        """DataLoader workers for ``device`` (see :attr:`ImageNetConfig.workers`)."""
        if self.config.workers is not None:
            return self.config.workers
        return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0

    def split(self, split: str, limit: int | None, seed: int) -> list[tuple[str, int]]:
        """The ``(path, label)`` list of ``split`` restricted to the class subset and a stratified seeded subset."""
        c = self.config
        samples, classes = image_list(self.root(), split, c.layout)
        if c.num_classes > len(classes):
            raise UsageError(f"imagenet.num_classes={c.num_classes} but {self.root()} has {len(classes)} classes")
        samples = [(path, label) for path, label in samples if label < c.num_classes]
        if not samples:
            raise DataError(f"no images of the first {c.num_classes} classes in {self.root()}/{split}")
        if limit is not None and limit < len(samples):
            labels = torch.tensor([label for _, label in samples])
            keep = subset_indices(labels, limit, seed, stratify=True).tolist()
            samples = [samples[i] for i in keep]
        return samples

    def build(self, context: BuildContext) -> Problem:
        c = self.config
        device = torch.device(context.device)
        workers = self.workers(device)
        train_samples = self.split("train", c.max_train_points, context.seed)
        test_samples = self.split("val", c.max_test_points, context.seed + 1)
        self._n_train = len(train_samples)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            module = build_network(c.arch, c.num_classes)
        if c.checkpoint is not None:
            load_checkpoint(c.checkpoint, module, list(range(c.num_classes)))
        else:

            def train() -> dict[str, Tensor]:
                files = ImageFiles(
                    train_samples, train_transform(c.image_size) if c.augment else eval_transform(c.image_size)
                )
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(context.seed)
                    train_network(module.to(device), files, c, device, workers, context.seed, context.progress)
                recalibrate_batchnorm(
                    module,
                    ImageFiles(train_samples, eval_transform(c.image_size)),
                    device,
                    workers,
                    max(c.batch_size, c.chunk_size),
                )
                return module.state_dict()

            state = context.cache.tensors("optima", {**self.problem_key(context.seed), "kind": "state_dict"}, train)
            module.load_state_dict(state)
        module.to(device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        transform = eval_transform(c.image_size)
        x_train = ImageRows(ImageFiles(train_samples, transform), device, workers=workers, chunk_size=c.chunk_size)
        x_test = ImageRows(ImageFiles(test_samples, transform), device, workers=workers, chunk_size=c.chunk_size)
        return StreamedProblem.from_module(
            module,
            cross_entropy,
            x_train,
            x_train.labels,
            x_test,
            x_test.labels,
            c.weight_decay,
            c.chunk_size,
            loss_module=torch.nn.CrossEntropyLoss(),
        )

    def protocol(self) -> Protocol:
        """The protocol; re-training steps are counted from the training images in :meth:`build` (before a build,
        from ``max_train_points`` or ImageNet's 1,281,167, which only the test-point check reads)."""
        c = self.config
        n = self._n_train if self._n_train is not None else (c.max_train_points or 1_281_167)
        return Protocol(
            test_point=c.test_point,
            eval_size=c.eval_size,
            retrain=Recipe(
                steps=epochs_to_steps(c.retrain_epochs, n, c.retrain_batch_size),
                lr=c.retrain_lr,
                batch_size=c.retrain_batch_size,
                momentum=c.retrain_momentum,
            ),
        )

    eigenvalue_iterations = 10

    def diagnostics(self, problem: Problem) -> dict[str, Any]:
        """The paper's appendix D noise check: the mean weight-gradient norm over minibatches of 128 at the optimum
        (the other, re-training on all points, is the ground truth's ``reference_drift``)."""
        return {"batch_gradient_norm": batch_gradient_check(problem, 128, self.config.noise_batches)}

    def paper_reference(self, estimator: str, selection: str) -> dict[str, float] | None:
        return None


@hookimpl
def bench_tasks() -> list[type[Task]]:
    return [ImageNet]
