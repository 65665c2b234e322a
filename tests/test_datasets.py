"""The MNIST and CIFAR-10 loaders, run on tiny data sets written in the real on-disk formats.

MNIST: IDX files written with ``struct``, plain and gzipped. CIFAR-10: batch pickles as Python 2 wrote them (string
opcodes, ``numpy.core`` globals) and as Python 3 re-encodes them (protocols 2, 4 and 5, bytes or str keys), with
``CIFAR10_PER_BATCH`` patched down so that a batch holds a few images instead of 10,000.
"""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import struct
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.common.errors import DataError, UsageError
from tasks import datasets
from tasks.datasets import (
    CIFAR10_FILES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    data_dir,
    load_cifar10,
    load_mnist,
    subset,
    subset_indices,
)

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PER_BATCH = 4


# -- writers of the on-disk formats ------------------------------------------------------------------------------------
def write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes, gz: bool = False) -> None:
    blob = struct.pack(f">{1 + len(shape)}I", magic, *shape) + payload
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def make_mnist(root: Path, n_train: int = 5, n_test: int = 3, gz: bool = False) -> dict[str, np.ndarray]:
    """Random 28x28 digits in ``root/MNIST/raw``; returns the raw arrays written."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 7 + 3) % 10
        write_idx(raw / f"{split}-images-idx3-ubyte", 2051, (n, 28, 28), images.tobytes(), gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", 2049, (n,), labels.astype(np.uint8).tobytes(), gz)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


class Python2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 and numpy 1 did: str and bytes as STRING opcodes, ``numpy.core`` globals."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = pickle.whichmodule(obj, name or obj.__qualname__).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[str] = save_string
    dispatch[bytes] = save_string
    dispatch[types.FunctionType] = save_global


def dump(obj: object, path: Path, style: str) -> None:
    """``style``: ``py2``, or ``pN`` for Python 3's pickle at protocol N."""
    with path.open("wb") as f:
        if style == "py2":
            Python2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=int(style[1:]))


def cifar_entry(data: np.ndarray, labels: list[int], bytes_keys: bool) -> dict:
    entry = {"batch_label": "batch", "data": data, "labels": labels, "filenames": [f"{i}.png" for i in labels]}
    return {k.encode(): v for k, v in entry.items()} if bytes_keys else entry


def make_cifar(root: Path, style: str = "p4", bytes_keys: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Six batches of ``PER_BATCH`` random images and ``batches.meta``; returns all data rows and labels in order."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows, labels = [], []
    for b, name in enumerate([*datasets.CIFAR10_TRAIN_FILES, "test_batch"]):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        batch_labels = [(b + i) % 10 for i in range(PER_BATCH)]
        dump(cifar_entry(data, batch_labels, bytes_keys), directory / name, style)
        rows.append(data)
        labels += batch_labels
    meta = {"label_names": list(datasets.CIFAR10_CLASSES), "num_cases_per_batch": PER_BATCH, "num_vis": 3072}
    dump({k.encode(): v for k, v in meta.items()} if bytes_keys else meta, directory / "batches.meta", style)
    return np.concatenate(rows), np.array(labels)


@pytest.fixture
def tiny_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "CIFAR10_PER_BATCH", PER_BATCH)


def single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- data_dir ----------------------------------------------------------------------------------------------------------
def test_data_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir(None) == tmp_path / "xdg" / "bench" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir(None) == tmp_path / "home" / ".cache" / "bench" / "data"
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(None) == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_dir(str(tmp_path / "s")) == tmp_path / "s"


def test_loaders_default_to_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist(tmp_path)
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert load_mnist()[0].shape == (5, 1, 28, 28)


# -- MNIST -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    raw = make_mnist(tmp_path, gz=gz)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path)
    assert x_train.shape == (5, 1, 28, 28) and x_test.shape == (3, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train[2, 0, 5, 17]) == pytest.approx((raw["train_images"][2, 5, 17] / 255 - MNIST_MEAN) / MNIST_STD)
    assert int(y_train[2]) == raw["train_labels"][2] and int(y_test[1]) == raw["t10k_labels"][1]
    torch.testing.assert_close(y_test, torch.from_numpy(raw["t10k_labels"]).long())
    pixels = (x_test.squeeze(1) * MNIST_STD + MNIST_MEAN) * 255
    torch.testing.assert_close(pixels, torch.from_numpy(raw["t10k_images"]).float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", MNIST_NAMES)
def test_mnist_missing_file(tmp_path: Path, name: str) -> None:
    make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / name).unlink()
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    message = single_line(exc)
    assert f"missing {name};" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "--download" in message and f"shared/tools/get-real-data {tmp_path}" in message


def test_mnist_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path / "nowhere")
    message = single_line(exc)
    assert all(name in message for name in MNIST_NAMES)


def test_mnist_download_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path, download=True)
    message = single_line(exc)
    assert "download failed" in message and "name resolution" in message
    assert "train-images-idx3-ubyte" in message and "get-real-data" in message


def test_mnist_download_skipped_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    make_mnist(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: pytest.fail("downloaded although present"))
    assert len(load_mnist(tmp_path, download=True)[1]) == 5


def rewrite(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    write_idx(path, magic, shape, payload)


@pytest.mark.parametrize(
    "fault, needle",
    [
        ("image magic", "magic number 2049, expected 2051"),
        ("label magic", "magic number 2051, expected 2049"),
        ("counts", "holds 5 images but"),
        ("image size", "images of 27x28"),
        ("truncated", "bytes, expected"),
        ("label 10", "label 10 out of range"),
    ],
)
def test_mnist_malformed(tmp_path: Path, fault: str, needle: str) -> None:
    raw_arrays = make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    images, labels = raw_arrays["train_images"], raw_arrays["train_labels"].astype(np.uint8)
    if fault == "image magic":
        rewrite(raw / MNIST_NAMES[0], 2049, (5, 28, 28), images.tobytes())
    elif fault == "label magic":
        rewrite(raw / MNIST_NAMES[1], 2051, (5,), labels.tobytes())
    elif fault == "counts":
        rewrite(raw / MNIST_NAMES[1], 2049, (4,), labels[:4].tobytes())
    elif fault == "image size":
        rewrite(raw / MNIST_NAMES[0], 2051, (5, 27, 28), images[:, :27].tobytes())
    elif fault == "truncated":
        blob = (raw / MNIST_NAMES[0]).read_bytes()
        (raw / MNIST_NAMES[0]).write_bytes(blob[:-100])
    else:
        labels[3] = 10
        rewrite(raw / MNIST_NAMES[1], 2049, (5,), labels.tobytes())
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    message = single_line(exc)
    assert needle in message
    assert "train-" in message


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_mnist_with_zero_images_is_one_line_naming_the_file(tmp_path: Path, split: str) -> None:
    make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / f"{split}-images-idx3-ubyte", 2051, (0, 28, 28), b"")
    write_idx(raw / f"{split}-labels-idx1-ubyte", 2049, (0,), b"")
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    message = single_line(exc)
    assert f"{split}-images-idx3-ubyte" in message and "no images" in message


# -- CIFAR-10 ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "style, bytes_keys",
    [("py2", False), ("p2", True), ("p2", False), ("p4", True), ("p4", False), ("p5", False)],
    ids=["python2-original", "p2-bytes-keys", "p2-str-keys", "p4-bytes-keys", "p4-str-keys", "p5-str-keys"],
)
def test_cifar_round_trip(tmp_path: Path, tiny_batches: None, style: str, bytes_keys: bool) -> None:
    rows, labels = make_cifar(tmp_path, style, bytes_keys)
    x_train, y_train, x_test, y_test = load_cifar10(tmp_path)
    n_train = 5 * PER_BATCH
    assert x_train.shape == (n_train, 3, 32, 32) and x_test.shape == (PER_BATCH, 3, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64 and y_test.dtype == torch.int64
    # image 6 is the third of data_batch_2: channel 1, row 7, column 30 sits at 1024 + 7 * 32 + 30 of its row
    expected = (rows[6, 1024 + 7 * 32 + 30] / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert float(x_train[6, 1, 7, 30]) == pytest.approx(expected)
    assert int(y_train[6]) == labels[6] and int(y_test[2]) == labels[n_train + 2]
    torch.testing.assert_close(torch.cat([y_train, y_test]), torch.from_numpy(labels).long())
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    pixels = ((torch.cat([x_train, x_test]) * std + mean) * 255).reshape(len(rows), 3072)
    torch.testing.assert_close(pixels, torch.from_numpy(rows).float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", CIFAR10_FILES)
def test_cifar_missing_file(tmp_path: Path, tiny_batches: None, name: str) -> None:
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / name).unlink()
    with pytest.raises(DataError) as exc:
        load_cifar10(tmp_path)
    message = single_line(exc)
    assert f"missing {name};" in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "--download" in message and f"shared/tools/get-real-data {tmp_path}" in message


def test_cifar_nothing_there_and_download_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: Path) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(datasets, "_cifar_download", offline)
    with pytest.raises(DataError) as exc:
        load_cifar10(tmp_path, download=True)
    message = single_line(exc)
    assert all(name in message for name in CIFAR10_FILES)
    assert "(download failed: OSError: Network is unreachable)" in message and "get-real-data" in message


def test_cifar_download_skipped_when_present(
    tmp_path: Path, tiny_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cifar(tmp_path)
    monkeypatch.setattr(datasets, "_cifar_download", lambda root: pytest.fail("downloaded although present"))
    assert len(load_cifar10(tmp_path, download=True)[3]) == PER_BATCH


def test_cifar_requires_full_batches(tmp_path: Path) -> None:
    """Without the patch, a batch must hold the real set's 10,000 images."""
    make_cifar(tmp_path)
    with pytest.raises(
        DataError,
        match=r"data_batch_1: 'data' is a uint8 array of shape \(4, 3072\), expected a uint8 "
        r"array of shape \(10000, 3072\)",
    ):
        load_cifar10(tmp_path)


def _bad_batches() -> dict[str, tuple[object, str]]:
    good = np.zeros((PER_BATCH, 3072), dtype=np.uint8)
    labels = [0, 1, 2, 3]
    return {
        "not a dict": ([good, labels], "holds a list, expected a dict"),
        "no labels": ({"data": good}, "no 'labels' key"),
        "no data": ({b"labels": labels}, "no 'data' key"),
        "data shape": ({"data": good[:, :3071], "labels": labels}, "shape (4, 3071)"),
        "data rows": ({"data": good[:3], "labels": labels}, "shape (3, 3072)"),
        "data dtype": ({"data": good.astype(np.int64), "labels": labels}, "'data' is a int64 array"),
        "data not array": ({"data": [1, 2], "labels": labels}, "'data' is a list"),
        "labels length": ({"data": good, "labels": labels[:3]}, "'labels' has shape (3,)"),
        "labels not ints": ({"data": good, "labels": ["a", "b", "c", "d"]}, "expected 4 integers"),
        "label 10": ({"data": good, "labels": [0, 10, 2, 3]}, "label 10 out of range 0..9"),
        "label -1": ({"data": good, "labels": [0, 1, -1, 3]}, "label -1 out of range 0..9"),
    }


@pytest.mark.parametrize("fault", list(_bad_batches()))
def test_cifar_malformed_batch(tmp_path: Path, tiny_batches: None, fault: str) -> None:
    make_cifar(tmp_path)
    obj, needle = _bad_batches()[fault]
    dump(obj, tmp_path / "cifar-10-batches-py" / "data_batch_3", "p4")
    with pytest.raises(DataError) as exc:
        load_cifar10(tmp_path)
    message = single_line(exc)
    assert "data_batch_3" in message and needle in message


def test_cifar_garbled_and_truncated(tmp_path: Path, tiny_batches: None) -> None:
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot unpickle .*test_batch"):
        load_cifar10(tmp_path)
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="cannot unpickle .*test_batch"):
        load_cifar10(tmp_path)


def test_cifar_bad_meta(tmp_path: Path, tiny_batches: None) -> None:
    make_cifar(tmp_path)
    dump({"label_names": ["cat"]}, tmp_path / "cifar-10-batches-py" / "batches.meta", "p4")
    with pytest.raises(DataError, match="batches.meta: 'label_names' missing or not 10 names"):
        load_cifar10(tmp_path)


# -- malicious pickles -------------------------------------------------------------------------------------------------
class Payload:
    """Pickles as a call of ``function(*args)``."""

    def __init__(self, function: object, *args: object):
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    import numpy.testing._private.utils as numpy_utils

    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "builtins.eval": (Payload(builtins.eval, code), "builtins.eval"),
        "builtins.exec": (Payload(builtins.exec, code), "builtins.exec"),
        "builtins.open": (Payload(builtins.open, str(marker), "w"), "builtins.open"),
        "numpy runstring": (Payload(numpy_utils.runstring, code, {}), "numpy.testing._private.utils.runstring"),
        "nested in a valid batch": (
            {"data": np.zeros((PER_BATCH, 3072), np.uint8), "labels": Payload(builtins.eval, code)},
            "builtins.eval",
        ),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    "kind",
    ["os.system", "builtins.eval", "builtins.exec", "builtins.open", "numpy runstring", "nested in a valid batch"],
)
def test_cifar_refuses_code(tmp_path: Path, tiny_batches: None, kind: str, protocol: int) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload, refused = _payloads(marker)[kind]
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with batch.open("wb") as f:
        pickle.dump(payload, f, protocol=protocol)
    with pytest.raises(DataError) as exc:
        load_cifar10(tmp_path)
    message = single_line(exc)
    assert str(batch) in message and "refused to unpickle global " in message
    # protocol 2 names Python 2's modules (__builtin__.eval), and open pickles as io.open
    assert message.split("refused to unpickle global ")[1].split(" ")[0].split(".")[-1] == refused.split(".")[-1]
    assert not marker.exists(), "the payload ran"


def test_codecs_encode_only_latin1(tmp_path: Path, tiny_batches: None) -> None:
    """``_codecs.encode``, which protocol-2 pickles of bytes need, is allowed only as str -> latin-1 bytes."""
    make_cifar(tmp_path)
    import _codecs

    dump(Payload(_codecs.encode, "x", "rot13"), tmp_path / "cifar-10-batches-py" / "data_batch_2", "p2")
    with pytest.raises(DataError, match="cannot unpickle .*data_batch_2.*latin1"):
        load_cifar10(tmp_path)


# -- subsets -----------------------------------------------------------------------------------------------------------
def test_subset_plain() -> None:
    y = torch.arange(55_000) % 10
    x = torch.arange(55_000).float().unsqueeze(1)
    xs, ys = subset(x, y, 5_500, seed=0)
    assert xs.shape == (5_500, 1) and ys.shape == (5_500,)
    indices = xs.squeeze(1).long()
    assert bool((indices.diff() > 0).all())  # distinct, in original order
    torch.testing.assert_close(ys, y[indices])
    torch.testing.assert_close(subset_indices(y, 5_500, 0), indices)
    assert not torch.equal(subset_indices(y, 5_500, 1), indices)


def test_subset_stratified() -> None:
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)[torch.randperm(100, generator=torch.Generator().manual_seed(3))]
    for size, expected in ((10, [6, 3, 1]), (7, [4, 2, 1]), (100, [60, 30, 10])):
        indices = subset_indices(y, size, seed=5, stratify=True)
        assert len(indices) == size == len(indices.unique())
        assert torch.bincount(y[indices], minlength=3).tolist() == expected
    torch.testing.assert_close(subset_indices(y, 10, 5, stratify=True), subset_indices(y, 10, 5, stratify=True))


@pytest.mark.parametrize("size", [0, -1, 101, 2.5, True])
def test_subset_bad_size(size: object) -> None:
    with pytest.raises(UsageError, match="subset size must be an integer in 1..100"):
        subset_indices(torch.zeros(100, dtype=torch.long), size, 0)  # type: ignore[arg-type]
