"""On-disk cache of trained optima and ground-truth entries.

Everything is keyed by the sha256 of a canonical JSON of the fields that determine it, written atomically (temporary
file, fsync, rename), verified by checksum on load, and loaded without executing code: JSON for records and
``torch.load(weights_only=True)`` for tensors.
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
from torch import Tensor

from benchmark.errors import CacheError

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

    Layout: ``optima/<digest>.pt`` (+ ``.json`` with its key and checksum) and ``loo/<digest>/`` (one JSON entry per
    removed training point, see :mod:`benchmark.groundtruth`).
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
    def tensors(self, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Load the tensors cached under ``kind``/``key``, or compute, store and return them."""
        stem = self.root / kind / digest(key)
        blob_path, meta_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
        meta = self.read_json(meta_path, key)
        if meta is not None and blob_path.exists():
            blob = blob_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() == meta["blob_sha256"]:
                return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
            log.warning("corrupt cache file %s: recomputing it", blob_path)
        tensors = compute()
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
        blob = buffer.getvalue()
        atomic_write(blob_path, blob)
        self.write_json(meta_path, key, {"blob_sha256": hashlib.sha256(blob).hexdigest()})
        return tensors
