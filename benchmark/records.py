"""Result records: one JSON file per estimator, selection and run, under ``<results dir>/<task>/``.

Schema (version :data:`SCHEMA_VERSION`)::

    schema, run_id, date (ISO 8601, UTC), commit, dirty, versions {bench, torch, python}, device {type, name},
    task {name, version, config}, seed, command (the bench command line, or null), threads,
    test_point {rule, index, loss},
    estimator {name, plugin, hyperparameters}, selection {kind, size, description},
    status ("ok" | "failed"), failure (reason or null),
    metrics {pearson, spearman, param_norm_pearson, param_norm_spearman: correlation records
             (see benchmark.scoring), ihvp_relative_residual (or null)},
    diagnostics {problem {...}, estimator {...}}, ground_truth {...}, timings {prepare_s, query_s},
    points {train_indices, estimated, retrained, estimated_param_norm, retrained_param_norm}, paper (or null)
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any

import torch

import benchmark
from benchmark.cache import atomic_write

SCHEMA_VERSION = 1
RESULTS_ENV = "BENCH_RESULTS_DIR"


def new_run_id() -> str:
    """A sortable, unique id: UTC time plus random suffix."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def git_commit() -> tuple[str | None, bool | None]:
    """The commit of the harness's source tree and whether it has uncommitted changes (``None`` outside git)."""
    root = Path(benchmark.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "benchmark", "estimators", "tasks"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def environment(device: str) -> dict[str, Any]:
    """Versions, commit and device of this process, for every record of a run."""
    commit, dirty = git_commit()
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or platform.machine()
    return {
        "commit": commit,
        "dirty": dirty,
        "versions": {"bench": benchmark.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": {"type": device, "name": name},
    }


def now() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write(record: dict[str, Any], results_dir: Path) -> Path:
    """Write ``record`` under ``results_dir/<task>/`` and return its path."""
    name = f"{record['run_id']}-{record['estimator']['name']}-{record['selection']['kind']}.json"
    path = Path(results_dir) / record["task"]["name"] / name
    atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


def load(results_dir: Path, task: str | None = None) -> list[dict[str, Any]]:
    """Every record under ``results_dir`` (for ``task`` only, if given), skipping none silently."""
    from benchmark.errors import DataError

    root = Path(results_dir)
    paths = sorted((root / task).glob("*.json") if task else root.glob("*/*.json"))
    out = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"unreadable result record {path}: {error}") from None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA_VERSION:
            raise DataError(f"result record {path} has schema {record.get('schema')!r}, expected {SCHEMA_VERSION}")
        out.append(record)
    return out
