"""ImageNet on disk, decoded on demand: the image lists, the preprocessing and the streaming loaders.

Two layouts are read from a root directory (the ``imagenet`` task's ``data_dir``)::

    folder:    root/train/<class>/*.JPEG and root/val/<class>/*.JPEG   (an ImageFolder tree per split)
    imagenet:  torchvision's ImageNet layout: root/meta.bin or root/ILSVRC2012_devkit_t12.tar.gz, with the
               extracted root/{train,val}/ or the archives ILSVRC2012_img_{train,val}.tar (torchvision extracts them)

Classes are sorted by directory name (for ImageNet the WordNet ids, which is torchvision's class order, so the
first ``k`` classes of a subset are the first ``k`` outputs of a torchvision ResNet). Nothing is held in memory but
the file list: :class:`ImageRows` decodes images when indexed, and streams them through a ``DataLoader`` (worker
processes, pinned memory) for full passes and training minibatches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from benchmark import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUTS = ("auto", "folder", "imagenet")
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
HOW_TO_GET = (
    "expected {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG (an ImageFolder tree), or torchvision's "
    "ImageNet layout ({root}/{devkit} with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar or their extracted "
    "train/ and val/); get ILSVRC2012 from https://image-net.org/download (registration required) and pass "
    "--set imagenet.data_dir=DIR"
)


def eval_transform(image_size: int) -> Callable[[Any], Tensor]:
    """The deterministic preprocessing (influence, re-training, tests): resize the short side to ``size * 256/224``,
    centre-crop ``size``, scale to [0, 1] and normalise with ImageNet's channel statistics."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(max(image_size, round(image_size * 256 / 224))),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_transform(image_size: int) -> Callable[[Any], Tensor]:
    """The augmented preprocessing of the optimum's training only (random resized crop and flip)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _has_classes(directory: Path) -> bool:
    return directory.is_dir() and any(p.is_dir() for p in directory.iterdir())


def resolve_layout(root: Path, layout: str) -> str:
    """``folder`` or ``imagenet`` for ``root`` (``auto``: ``imagenet`` where a devkit or ``meta.bin`` is present).

    Raises:
        DataError: nothing usable under ``root``, naming the directory, the expected layout and how to get it.
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown ImageNet layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    torchvision_layout = (root / "meta.bin").is_file() or (root / DEVKIT).is_file()
    if layout == "imagenet" or (layout == "auto" and torchvision_layout):
        if not torchvision_layout:
            raise DataError(
                f"ImageNet not found in {root}: no meta.bin or {DEVKIT}; " + HOW_TO_GET.format(root=root, devkit=DEVKIT)
            )
        return "imagenet"
    missing = [f"{split}/" for split in ("train", "val") if not _has_classes(root / split)]
    if missing:
        raise DataError(
            f"ImageNet not found in {root}: no class directories in {' or '.join(missing)}; "
            + HOW_TO_GET.format(root=root, devkit=DEVKIT)
        )
    return "folder"


def image_list(root: Path, split: str, layout: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)`` of one split: ``(path, label)`` pairs in file order, and the sorted class names."""
    from torchvision import datasets

    if resolve_layout(root, layout) == "imagenet":
        try:
            dataset = datasets.ImageNet(str(root), split=split)
        except (RuntimeError, OSError) as error:
            raise DataError(
                f"cannot read ImageNet's {split} split in {root}: {' '.join(str(error).split())}; "
                + HOW_TO_GET.format(root=root, devkit=DEVKIT)
            ) from None
        return list(dataset.samples), list(dataset.wnids)
    try:
        dataset = datasets.ImageFolder(str(root / split))
    except (FileNotFoundError, OSError) as error:
        raise DataError(
            f"cannot read ImageNet's {split} split in {root / split}: {' '.join(str(error).split())}; "
            + HOW_TO_GET.format(root=root, devkit=DEVKIT)
        ) from None
    return list(dataset.samples), list(dataset.classes)


class ImageFiles(Dataset):
    """``(image, label)`` pairs from a list of files: decoded with PIL and preprocessed on access."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], Tensor]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import pil_loader

        path, label = self.samples[index]
        try:
            image = pil_loader(path)
        except OSError as error:
            raise DataError(f"cannot decode image {path}: {' '.join(str(error).split())}") from None
        return self.transform(image), label


@dataclasses.dataclass
class ImageRows:
    """A data set's images as the rows of a virtual tensor: ``len(rows)``, ``rows[indices]`` (decoded now) and
    streamed batches, so a :class:`~benchmark.numerics.problem.Problem` can hold data that does not fit in memory.

    Attributes:
        files: the images (deterministic preprocessing).
        device, dtype: where and in which dtype decoded images are delivered.
        workers: ``DataLoader`` worker processes for streamed passes (0: decode in this process).
        chunk_size: images per streamed batch of a full pass.
    """

    files: ImageFiles
    device: torch.device
    dtype: torch.dtype = torch.float32
    workers: int = 0
    chunk_size: int = 256

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self._pass_loader: DataLoader | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> Tensor:
        """All labels, ``Tensor[N]`` (int64, on :attr:`device`), read from the file list without decoding."""
        return torch.tensor([label for _, label in self.files.samples], dtype=torch.long, device=self.device)

    def is_floating_point(self) -> bool:
        """Rows are delivered as floating-point images (so :meth:`Problem.to` casts them like tensors)."""
        return True

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ImageRows:
        """The same rows delivered on another device or in another floating dtype."""
        return dataclasses.replace(
            self, device=torch.device(device) if device is not None else self.device, dtype=dtype or self.dtype
        )

    def __getitem__(self, key: int | slice | Sequence[int] | Tensor) -> Tensor:
        """Decode the rows ``key`` selects (an index, a slice, a list or a tensor of indices): ``Tensor[m, C, H, W]``
        (a single image ``Tensor[C, H, W]`` for an int)."""
        if isinstance(key, int):
            return self._deliver(self.files[key][0])
        if isinstance(key, slice):
            indices = list(range(len(self)))[key]
        else:
            indices = torch.as_tensor(key).reshape(-1).tolist()
        if not indices:
            raise IndexError("empty selection of image rows")
        return self._deliver(torch.stack([self.files[i][0] for i in indices]))

    def _deliver(self, x: Tensor) -> Tensor:
        return x.to(device=self.device, dtype=self.dtype, non_blocking=True)

    def _loader(self, **kwargs: Any) -> DataLoader:
        workers = self.workers
        return DataLoader(
            self.files,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0 and "batch_size" in kwargs,
            prefetch_factor=4 if workers > 0 else None,
            **kwargs,
        )

    def passes(self, chunk_size: int | None = None) -> Iterator[tuple[slice, Tensor, Tensor]]:
        """One pass over every row in order, in batches: ``(rows, x, y)`` with ``rows`` the slice they cover."""
        size = chunk_size or self.chunk_size
        if size == self.chunk_size:  # kept, so its worker processes persist from pass to pass
            if self._pass_loader is None:
                self._pass_loader = self._loader(batch_size=size, shuffle=False)
            loader = self._pass_loader
        else:
            loader = self._loader(batch_size=size, shuffle=False)
        start = 0
        for x, y in loader:
            rows = slice(start, start + len(x))
            start = rows.stop
            yield rows, self._deliver(x), y.to(self.device, non_blocking=True)

    def load(self, batches: Sequence[Tensor | Sequence[int] | None]) -> Iterator[tuple[Tensor, Tensor]]:
        """The rows of each index batch in ``batches``, in order (``None``: every row), decoded ahead by the workers."""
        everything = list(range(len(self)))
        sampler = [everything if b is None else torch.as_tensor(b).reshape(-1).tolist() for b in batches]
        if not sampler:
            return
        for x, y in self._loader(batch_sampler=sampler):
            yield self._deliver(x), y.to(self.device, non_blocking=True)


def write_synthetic_tree(
    root: str | Path,
    classes: int = 3,
    train_per_class: int = 4,
    val_per_class: int = 2,
    size: tuple[int, int] = (20, 24),
    seed: int = 0,
) -> Path:
    """Write a generated ImageFolder tree in the ``folder`` layout (JPEGs named like ImageNet's, a colour and a
    texture per class plus noise, so a network can learn it): for tests and for checking the pipeline on a machine
    without ImageNet. Returns ``root``."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = f"n{10_000_000 + c:08d}"
            directory = root / split / wnid
            directory.mkdir(parents=True, exist_ok=True)
            colour = rng.uniform(40, 215, size=3)
            stripes = 60 * np.sin((rows * np.cos(c) + cols * np.sin(c)) * (0.5 + 0.3 * c))[..., None]
            for i in range(per_class):
                image = colour + stripes + rng.normal(0, 30, (height, width, 3))
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                    directory / f"{wnid}_{i}.JPEG", quality=90
                )
    return root
