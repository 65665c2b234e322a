"""What a cache holds of leave-one-out ground truth (``bench gt --status``): one row per ground truth, with its task,
configuration, test point and re-training recipe, read from the keys its entries were written under, and how many of
its entries are intact.

An entry counts as corrupt where :class:`~benchmark.groundtruth.engine.GroundTruth` would find it corrupt and
recompute it: damaged, or intact but filed under another index or another ground truth's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.common.cache import Cache, digest
from benchmark.groundtruth.engine import valid_payload


def cache_status(cache: Cache) -> list[dict[str, Any]]:
    """One summary row per ground truth in ``cache``: what it is for, how many entries it holds, how many are corrupt
    (damaged, or intact but filed under another index or another ground truth's directory)."""
    rows = []
    for directory in sorted(p for p in (cache.root / "loo").glob("*") if p.is_dir()):
        entries = [p for p in directory.glob("*.json") if p.stem.isdigit()]
        verified = [_entry_key_if_valid(cache, directory, p) for p in entries]
        keys = [key for key in verified if key is not None]
        if not keys:
            rows.append({"directory": directory.name[:12], "task": "?", "entries": 0, "corrupt": len(entries)})
            continue
        key = keys[0]
        rows.append(
            {
                "directory": directory.name[:12],
                "task": f"{key['task']} v{key['version']}",
                "config": ", ".join(f"{k}={v}" for k, v in key["config"].items()),
                "seed": key["seed"],
                "test point": key["test_index"],
                "re-training": f"{key['recipe']['steps']} steps, seed {key['recipe']['seed']}",
                "entries": len(keys),
                "corrupt": len(entries) - len(keys),
                "reference": (cache.root / "loo-reference" / f"{digest({**key, 'removed': 'reference'})}.pt").exists(),
            }
        )
    return rows


def _entry_key_if_valid(cache: Cache, directory: Path, path: Path) -> dict[str, Any] | None:
    """The key of the entry at ``path`` if it passes its checksum, belongs to this ``directory``'s ground truth and is
    filed under its own index; else ``None`` (corrupt, as :meth:`~benchmark.groundtruth.engine.GroundTruth._load` would
    find it)."""
    entry = cache.verified_entry(path)
    if entry is None or not isinstance(entry["key"], dict) or not valid_payload(entry["payload"]):
        return None
    key = dict(entry["key"])
    if key.pop("removed", None) != int(path.stem) or digest(key) != directory.name:
        return None
    return entry["key"]
