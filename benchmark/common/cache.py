"""On-disk cache of trained optima and ground-truth entries.

Everything is keyed by the sha256 of a canonical JSON of the fields that determine it, written atomically (temporary
file, fsync, rename), verified by checksum on load, and loaded without executing code: JSON for records and
``torch.load(weights_only=True)`` for tensors. A missing or corrupt entry is computed under an OS file lock, so that
processes sharing a cache compute it once; reading a valid entry takes no lock and writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import Tensor

from benchmark.common.errors import CacheError

log = logging.getLogger("bench")

CACHE_ENV = "BENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/bench``, else ``~/.cache/bench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench"


def canonical(fields: Any) -> str:
    """The canonical JSON text of ``fields`` (sorted keys, no whitespace)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


def digest(fields: Any) -> str:
    """sha256 hex digest of the canonical JSON of ``fields``."""
    return hashlib.sha256(canonical(fields).encode()).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Cache:
    """A cache directory.

    Layout: ``<kind>/<digest>.pt`` (+ ``.json`` with its key and checksum; its lock ``.locks/<kind>/<digest>.pt.lock``)
    for tensors (kinds ``optima``, ``hessians``, ``loo-reference``) and ``loo/<digest>/`` (one JSON entry per removed
    training point, see :mod:`benchmark.groundtruth.engine`).
    """

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    # -- JSON entries ------------------------------------------------------------------------------------------------
    def write_json(self, path: Path, key: dict[str, Any], payload: dict[str, Any]) -> None:
        """Write ``payload`` under ``key``, with a checksum of both."""
        entry = {"key": key, "payload": payload, "sha256": digest([key, payload])}
        atomic_write(path, canonical(entry).encode())

    def read_json(self, path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
        """The payload stored at ``path`` for ``key``; ``None`` if absent or corrupt (logged, to be recomputed).

        Raises:
            CacheError: the entry is intact but was written for another key.
        """
        if not path.exists():
            return None
        entry = self.verified_entry(path)
        if entry is None:
            log.warning("corrupt cache entry %s: recomputing it", path)
            return None
        if entry["key"] != json.loads(canonical(key)):
            raise CacheError(f"cache entry {path} was written for another request; refusing to reuse it")
        return entry["payload"]

    @staticmethod
    def verified_entry(path: Path) -> dict[str, Any] | None:
        """The whole entry (``key``, ``payload``) at ``path`` if it passes its checksum, else ``None``."""
        try:
            entry = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("sha256") != digest([entry.get("key"), entry.get("payload")]):
            return None
        return entry

    # -- tensors -----------------------------------------------------------------------------------------------------
    def load_tensors(self, kind: str, key: dict[str, Any], warn: bool = True) -> dict[str, Tensor] | None:
        """The tensors cached under ``kind``/``key``; ``None`` if absent or corrupt (logged if ``warn``).

        Corrupt: a damaged or missing file, a checksum that does not match, metadata written for another key, or a
        file that the safe loader (``torch.load(weights_only=True)``) refuses or that is not a mapping of tensors.
        Reading takes no lock and writes nothing, so a read-only but complete cache is usable.
        """
        stem = self.root / kind / digest(key)
        blob_path, meta_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
        if not meta_path.exists():
            return None
        try:
            meta = self.read_json(meta_path, key)
        except CacheError:
            meta = None
        problem = None
        if meta is None or not isinstance(meta.get("blob_sha256"), str):
            problem = f"corrupt cache entry {meta_path}"
        elif not blob_path.exists():
            problem = f"corrupt cache entry {meta_path} (its tensor file is missing)"
        else:
            try:
                blob = blob_path.read_bytes()
            except OSError as error:
                blob, problem = b"", f"corrupt cache file {blob_path} (unreadable: {error.strerror})"
            if problem is None and hashlib.sha256(blob).hexdigest() != meta["blob_sha256"]:
                problem = f"corrupt cache file {blob_path} (checksum mismatch)"
            if problem is None:
                try:
                    tensors = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
                except Exception as error:  # noqa: BLE001 - any refusal of the safe loader means a corrupt file
                    # torch's own message advises weights_only=False, which would execute the file: never shown
                    problem = f"corrupt cache file {blob_path} (not a plain tensor file: {type(error).__name__})"
                else:
                    if (
                        isinstance(tensors, dict)
                        and tensors
                        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items())
                    ):
                        return tensors
                    problem = f"corrupt cache file {blob_path} (not a mapping of names to tensors)"
        if warn:
            log.warning("%s: recomputing it", problem)
        return None

    def lock(self, path: Path) -> FileLock:
        """The OS file lock that guards computing the entry at ``path`` (a path inside the cache): the same path under
        ``.locks/`` plus ``.lock``, outside the entry's own directory, so that a computation that fails (or a probe
        whose ``compute`` raises) leaves nothing there."""
        lock_path = self.root / ".locks" / f"{Path(path).relative_to(self.root)}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(lock_path)

    def tensors(self, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Load the tensors cached under ``kind``/``key``, or compute, store and return them.

        A valid entry is read without locking. Otherwise the entry is claimed with an OS file lock first, so that
        processes sharing the cache compute it once: one computes while the others wait and then read its result (a
        killed process's lock is released by the OS, and the next one computes the entry).
        """
        found = self.load_tensors(kind, key)
        if found is not None:
            return found
        blob_path = (self.root / kind / digest(key)).with_suffix(".pt")
        lock = self.lock(blob_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process computing %s", blob_path)
            lock.acquire()
        try:
            found = self.load_tensors(kind, key, warn=False)  # written meanwhile by the process that held the lock
            if found is not None:
                return found
            tensors = compute()
            self.store_tensors(kind, key, tensors)
        finally:
            lock.release()
        return tensors

    def tensor_lock(self, kind: str, key: dict[str, Any]) -> FileLock:
        """The lock :meth:`tensors` takes to compute the entry ``kind``/``key``: a caller that computes several
        entries at once (e.g. optima trained together) takes each entry's lock, then :meth:`store_tensors`."""
        return self.lock((self.root / kind / digest(key)).with_suffix(".pt"))

    def store_tensors(self, kind: str, key: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Write ``tensors`` as the entry ``kind``/``key`` (atomically, with its checksum); the caller holds the
        entry's :meth:`tensor_lock`."""
        stem = self.root / kind / digest(key)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
        blob = buffer.getvalue()
        atomic_write(stem.with_suffix(".pt"), blob)
        self.write_json(stem.with_suffix(".json"), key, {"blob_sha256": hashlib.sha256(blob).hexdigest()})
