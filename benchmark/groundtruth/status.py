"""What a cache holds of ground truth (``bench gt --status``): for leave-one-out, one row per ground truth, with its
task, configuration, test point and re-training recipe, read from the keys its entries were written under, and how
many of its entries are intact; for the linear datamodeling score, one row per set of subset models (task,
configuration, fraction, training seed) with how many models it holds.

An entry counts as corrupt where :class:`~benchmark.groundtruth.engine.GroundTruth` would find it corrupt and
recompute it: damaged, or intact but filed under another index or another ground truth's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.common.cache import Cache, digest
from benchmark.groundtruth.engine import GroundTruth, valid_payload
from benchmark.groundtruth.pbrf import PbrfGroundTruth
from benchmark.groundtruth.scratch import ScratchGroundTruth


def cache_status(cache: Cache, kind: type[GroundTruth] = GroundTruth) -> list[dict[str, Any]]:
    """One summary row per ground truth of ``kind`` (leave-one-out, :class:`PbrfGroundTruth` or
    :class:`ScratchGroundTruth`) in ``cache``: what it is for, how many entries it holds, how many are corrupt (damaged,
    or intact but filed under another index or another ground truth's directory)."""
    rows = []
    for directory in sorted(p for p in (cache.root / kind.kind).glob("*") if p.is_dir()):
        entries = [p for p in directory.glob("*.json") if p.stem.isdigit()]
        verified = [_entry_key_if_valid(cache, directory, p, kind) for p in entries]
        keys = [key for key in verified if key is not None]
        if not keys:
            rows.append({"directory": directory.name[:12], "task": "?", "entries": 0, "corrupt": len(entries)})
            continue
        key = keys[0]
        row = {
            "directory": directory.name[:12],
            "task": f"{key['task']} v{key['version']}",
            "config": ", ".join(f"{k}={v}" for k, v in key["config"].items()),
            "seed": key["seed"],
            "test point": key["test_index"],
        }
        if issubclass(kind, PbrfGroundTruth):
            row["damping"] = key[kind.kind]["damping"]
            rows.append({**row, "entries": len(keys), "corrupt": len(entries) - len(keys)})
            continue
        if kind is ScratchGroundTruth:
            steps = sum(phase["steps"] for phase in key["phases"])
            row["training"] = f"{steps} steps from scratch, seed {key['train_seed']}"
            rows.append({**row, "entries": len(keys), "corrupt": len(entries) - len(keys)})
            continue
        reference = cache.root / "loo-reference" / f"{digest({**key, 'removed': 'reference'})}.pt"
        rows.append(
            {
                **row,
                "re-training": f"{key['recipe']['steps']} steps, seed {key['recipe']['seed']}",
                "entries": len(keys),
                "corrupt": len(entries) - len(keys),
                "reference": reference.exists(),
            }
        )
    return rows


def _entry_key_if_valid(
    cache: Cache, directory: Path, path: Path, kind: type[GroundTruth] = GroundTruth
) -> dict[str, Any] | None:
    """The key of the entry at ``path`` if it passes its checksum, belongs to this ``directory``'s ground truth and is
    filed under its own index; else ``None`` (corrupt, as :meth:`~benchmark.groundtruth.engine.GroundTruth._load` would
    find it)."""
    entry = cache.verified_entry(path)
    if entry is None or not isinstance(entry["key"], dict) or not valid_payload(entry["payload"], kind.effect_type):
        return None
    key = dict(entry["key"])
    if key.pop("removed", None) != int(path.stem) or digest(key) != directory.name:
        return None
    return entry["key"]


def subset_status(cache: Cache) -> list[dict[str, Any]]:
    """One summary row per set of linear-datamodeling subset models in ``cache`` (a task configuration, a fraction,
    a design seed and a training seed): how many models it holds, and how many entries are corrupt."""
    groups: dict[str, dict[str, Any]] = {}
    for meta in sorted((cache.root / "lds").glob("*.json")):
        entry = cache.verified_entry(meta)
        key = entry.get("key") if entry is not None else None
        if not isinstance(key, dict) or "subset" not in key:
            groups.setdefault("?", {"task": "?", "models": 0, "corrupt": 0})["corrupt"] += 1
            continue
        group = {k: v for k, v in key.items() if k != "subset"}
        row = groups.setdefault(
            digest(group),
            {
                "task": f"{key['task']} v{key['version']}",
                "config": ", ".join(f"{k}={v}" for k, v in key["config"].items()),
                "seed": key["seed"],
                "fraction": key["fraction"],
                "design seed": key["design_seed"],
                "training seed": key["train_seed"],
                "models": 0,
                "corrupt": 0,
            },
        )
        intact = meta.with_suffix(".pt").exists()
        row["models" if intact else "corrupt"] += 1
    return sorted(groups.values(), key=lambda row: (row["task"], row.get("config", ""), row.get("training seed", -1)))
