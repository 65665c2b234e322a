"""MNIST and CIFAR-10 from disk, as normalised tensors in memory.

Both loaders read torchvision's on-disk layout under a data directory ``root`` (see :func:`data_dir`)::

    root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte        (or the same names + ".gz")
    root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

They parse the files themselves, whole arrays at a time: MNIST's IDX format with numpy, CIFAR-10's pickles with a
restricted unpickler that resolves only numpy's array-reconstruction globals, so a tampered batch file cannot run
code. They check structure, not checksums (the copies built by ``shared/tools/get-real-data`` hold the original
arrays but not the original pickle bytes), and raise :class:`~benchmark.common.errors.DataError` with the file and the
fault for anything missing or malformed.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark import DataError, UsageError

DATA_ENV = "BENCH_DATA_DIR"

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel statistics of the CIFAR-10 training set (pixel values in [0, 1])."""
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
CIFAR10_PER_BATCH = 10_000
"""Images in each CIFAR-10 batch file (the loader requires exactly this many)."""

_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
_MNIST_SIDE = 28
_CIFAR_PIXELS = 3 * 32 * 32
_HOW_TO_GET = "pass --download where the network allows, or run shared/tools/get-real-data {root}"


def data_dir(explicit: str | Path | None = None) -> Path:
    """Where the data sets live: ``explicit``, else ``$BENCH_DATA_DIR``, else ``$XDG_CACHE_HOME/bench/data``, else
    ``~/.cache/bench/data``."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench" / "data"


def _missing_error(what: str, directory: Path, missing: list[str], root: Path, download_error: str | None) -> DataError:
    tried = f" (download failed: {download_error})" if download_error else ""
    message = f"{what} not found in {directory}: missing {', '.join(missing)}{tried}; " + _HOW_TO_GET.format(root=root)
    return DataError(" ".join(message.split("\n")))


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


# -- MNIST -------------------------------------------------------------------------------------------------------------
def _mnist_paths(raw: Path) -> tuple[dict[str, Path], list[str]]:
    found, missing = {}, []
    for names in MNIST_FILES.values():
        for name in names:
            for candidate in (raw / name, raw / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
            else:
                missing.append(name)
    return found, missing


def _read_idx(path: Path, magic: int, dims: int) -> tuple[tuple[int, ...], bytes, int]:
    """The shape, the bytes and the header length of the IDX file at ``path`` (unsigned-byte data)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from exc
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected at least {header})")
    found, *shape = struct.unpack_from(f">{1 + dims}I", raw)
    if found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic} (not an IDX file of this kind)")
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for shape {tuple(shape)} (truncated or padded)")
    return tuple(shape), raw, header


def _read_mnist_split(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    shape, raw, offset = _read_idx(images_path, _IDX_IMAGES_MAGIC, 3)
    n, rows, cols = shape
    if n == 0:
        raise DataError(f"{images_path}: holds no images (its IDX header says 0); replace it with the MNIST file")
    if (rows, cols) != (_MNIST_SIDE, _MNIST_SIDE):
        raise DataError(f"{images_path}: images of {rows}x{cols}, expected {_MNIST_SIDE}x{_MNIST_SIDE}")
    (n_labels,), raw_labels, label_offset = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1)
    if n_labels != n:
        raise DataError(f"{images_path} holds {n} images but {labels_path} holds {n_labels} labels")
    labels = np.frombuffer(raw_labels, dtype=np.uint8, offset=label_offset)
    if n and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(n, 1, rows, cols)
    x = torch.from_numpy(pixels.astype(np.float32))
    x.div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(root: str | Path | None = None, download: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST as ``x_train, y_train, x_test, y_test``.

    Args:
        root: the data directory (``None``: :func:`data_dir`); the files are read from ``root/MNIST/raw``, each
            either plain or gzipped.
        download: if files are missing, fetch them first with torchvision (needs the network).

    Returns:
        ``x``: ``float32 [N, 1, 28, 28]``, pixels scaled to [0, 1] and normalised with mean 0.1307 and std 0.3081;
        ``y``: ``int64 [N]`` in 0..9. The real set has 60,000 training and 10,000 test images.

    Raises:
        DataError: files missing (the message says how to get them), or malformed: wrong magic number, wrong image
            size, a file length that does not match its header, image and label counts that differ, no images, a
            label > 9.
    """
    root = data_dir(root)
    raw = root / "MNIST" / "raw"
    found, missing = _mnist_paths(raw)
    download_error = None
    if missing and download:
        try:
            from torchvision.datasets import MNIST

            MNIST(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - any failure of the download leaves the missing-files error below
            download_error = _one_line(exc)
        found, missing = _mnist_paths(raw)
    if missing:
        raise _missing_error("MNIST", raw, missing, root, download_error)
    train = _read_mnist_split(*(found[name] for name in MNIST_FILES["train"]))
    test = _read_mnist_split(*(found[name] for name in MNIST_FILES["test"]))
    return (*train, *test)


# -- CIFAR-10 ----------------------------------------------------------------------------------------------------------
def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2, restricted to that use (str -> latin-1 bytes)."""
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode only allowed on str with latin1, got {encoding!r}")
    return text.encode("latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    # the original batches were pickled by numpy 1 (numpy.core); copies re-pickled by numpy 2 name numpy._core
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is refused before anything calls it."""

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="latin1")  # numpy's advice for Python 2 pickles; bytes stay bytes
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path}: refused to unpickle global {module}.{name} (a CIFAR-10 batch holds only numpy arrays, "
                "lists and strings; the file is corrupt or not what it claims to be)"
            ) from None


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pickles raise many kinds of error
        raise DataError(f"cannot unpickle {path}: {_one_line(exc)}") from exc


def _as_str_keys(entry: Any, path: Path) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise DataError(f"{path}: holds a {type(entry).__name__}, expected a dict (not a CIFAR-10 batch)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _as_str_keys(_unpickle(path), path)
    missing = [key for key in ("data", "labels") if key not in entry]
    if missing:
        raise DataError(f"{path}: no {' or '.join(repr(k) for k in missing)} key (keys: {sorted(map(str, entry))})")
    data, labels = entry["data"], entry["labels"]
    expected = (CIFAR10_PER_BATCH, _CIFAR_PIXELS)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != expected:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {found}, expected a uint8 array of shape {expected}")
    try:
        labels = np.asarray(labels)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: 'labels' is not a sequence of integers ({_one_line(exc)})") from exc
    if labels.shape != (CIFAR10_PER_BATCH,) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: 'labels' has shape {labels.shape} and dtype {labels.dtype}, expected {CIFAR10_PER_BATCH} integers"
        )
    if labels.min() < 0 or labels.max() > 9:
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise DataError(f"{path}: label {bad} out of range 0..9")
    return data, labels.astype(np.int64)


def _check_cifar_meta(path: Path) -> None:
    entry = _as_str_keys(_unpickle(path), path)
    names = entry.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != len(CIFAR10_CLASSES):
        raise DataError(f"{path}: 'label_names' missing or not {len(CIFAR10_CLASSES)} names")


def _cifar_tensors(arrays: list[np.ndarray], labels: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    data = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x.div_(255.0).sub_(mean).div_(std)
    return x, torch.from_numpy(np.concatenate(labels))


def _cifar_download(root: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    # only the archive (md5-checked by torchvision); torchvision's own loader would unpickle without restriction
    download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)


def load_cifar10(root: str | Path | None = None, download: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-10 as ``x_train, y_train, x_test, y_test``.

    Args:
        root: the data directory (``None``: :func:`data_dir`); the batches are read from
            ``root/cifar-10-batches-py``. Pickles written by Python 2 (the originals, str keys read as str) and by
            Python 3 (bytes or str keys, protocols 2 to 5) are accepted; only numpy's array-reconstruction globals
            are resolved, any other global is refused before it runs.
        download: if files are missing, fetch the archive first with torchvision (needs the network).

    Returns:
        ``x``: ``float32 [N, 3, 32, 32]``, pixels scaled to [0, 1] and normalised per channel with
        :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`; ``y``: ``int64 [N]`` in 0..9 (:data:`CIFAR10_CLASSES`).
        50,000 training images (``data_batch_1`` .. ``data_batch_5`` in order) and 10,000 test images.

    Raises:
        DataError: files missing (the message says how to get them), a refused global, an unreadable pickle, or a
            batch of the wrong structure: not a dict, no ``data``/``labels``, ``data`` not ``uint8 (10000, 3072)``,
            not 10,000 labels, a label outside 0..9; ``batches.meta`` without 10 ``label_names``.
    """
    root = data_dir(root)
    directory = root / "cifar-10-batches-py"

    def absent() -> list[str]:
        return [name for name in CIFAR10_FILES if not (directory / name).is_file()]

    missing, download_error = absent(), None
    if missing and download:
        try:
            _cifar_download(root)
        except Exception as exc:  # noqa: BLE001 - any failure of the download leaves the missing-files error below
            download_error = _one_line(exc)
        missing = absent()
    if missing:
        raise _missing_error("CIFAR-10", directory, missing, root, download_error)
    _check_cifar_meta(directory / "batches.meta")
    train = [_read_cifar_batch(directory / name) for name in CIFAR10_TRAIN_FILES]
    test = [_read_cifar_batch(directory / "test_batch")]
    x_train, y_train = _cifar_tensors([d for d, _ in train], [y for _, y in train])
    del train
    x_test, y_test = _cifar_tensors([d for d, _ in test], [y for _, y in test])
    return x_train, y_train, x_test, y_test


# -- subsets -----------------------------------------------------------------------------------------------------------
def subset_indices(y: Tensor, size: int, seed: int, *, stratify: bool = False) -> Tensor:
    """``size`` distinct indices into ``y``, drawn with ``seed``, in increasing order.

    Plain (default): a uniformly random subset, as Koh & Liang draw their small MNIST (10% of the 55,000 training
    images left after TensorFlow's 5,000-image validation split: 5,500). Stratified: each class gets its share of
    ``size`` in proportion to its frequency (largest remainders round, ties to the lower class), then a random
    subset within each class.

    Raises:
        UsageError: ``size`` not in ``1..len(y)``.
    """
    n = len(y)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
        raise UsageError(f"subset size must be an integer in 1..{n}, got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    y = y.detach().cpu()
    if not stratify:
        return torch.randperm(n, generator=generator)[:size].sort().values
    classes, counts = torch.unique(y, return_counts=True)
    share = counts.double() * size / n
    quota = share.floor().long()
    remainder = size - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda c: (-(share[c] - quota[c]).item(), c))
    for c in order[:remainder]:
        quota[c] += 1
    chosen = []
    for c, q in zip(classes, quota):
        members = torch.nonzero(y == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: int(q)]])
    return torch.cat(chosen).sort().values


def subset(x: Tensor, y: Tensor, size: int, seed: int, *, stratify: bool = False) -> tuple[Tensor, Tensor]:
    """``x[i], y[i]`` for ``i = subset_indices(y, size, seed, stratify=stratify)`` (original order kept)."""
    if len(x) != len(y):
        raise UsageError(f"subset of {len(x)} inputs but {len(y)} labels")
    indices = subset_indices(y, size, seed, stratify=stratify)
    return x[indices.to(x.device)], y[indices.to(y.device)]
