"""Result records: one JSON file per estimator, selection and run, under ``<results dir>/<task>/``.

Schema (version :data:`SCHEMA_VERSION`)::

    schema, run_id, date (ISO 8601, UTC), commit, dirty, versions {bench, torch, python}, device {type, name},
    task {name, version, config}, seed, command (the bench command line, or null), threads,
    test_point {rule, index, loss},
    estimator {name, plugin, hyperparameters}, selection {kind, size, description},
    status ("ok" | "failed" | "skipped": the estimator does not apply to the problem, e.g. exact above its
    max_params), failure (why there is no score: the failure or the reason for the skip; null when ok),
    metrics {pearson, spearman, param_norm_pearson, param_norm_spearman: correlation records
             (see benchmark.scoring), ihvp_relative_residual (or null)},
    diagnostics {problem {...}, estimator {...}}, ground_truth {..., reference_drift, drift_to_effect (see
    DRIFT_DOMINATED)}, timings {prepare_s, query_s},
    points {train_indices, estimated, retrained, estimated_param_norm, retrained_param_norm}, paper (or null)
"""

from __future__ import annotations

import datetime
import json
import logging
import platform
import subprocess
import uuid
from pathlib import Path
from typing import Any

import torch

import benchmark
from benchmark.cache import atomic_write

log = logging.getLogger("bench")

SCHEMA_VERSION = 1
RESULTS_ENV = "BENCH_RESULTS_DIR"
STATUSES = ("ok", "failed", "skipped")
"""A record's ``status``: scored; the estimator failed (``failure`` says why); or it does not apply to the problem
(:class:`~benchmark.errors.EstimatorSkipped`, ``failure`` holds the reason). Records written before ``skipped``
existed hold ``ok`` or ``failed`` and stay valid."""

DRIFT_DOMINATED = 10.0
"""The ratio ``ground_truth.drift_to_effect`` (the reference drift, the change of the test loss from re-training on
all points, over the median |leave-one-out effect|) above which a run's ground truth is *drift-dominated*: the
re-training recipe moves the model more than removing one point does, so the correlations measure mostly that drift
(an optimum far from stationary, or a recipe too long or too noisy). ``bench run`` warns and the leaderboard marks
the section."""


def drift_dominated(ground_truth: dict[str, Any]) -> float | None:
    """The drift-to-effect ratio of a record's ``ground_truth`` where it exceeds :data:`DRIFT_DOMINATED`, else None."""
    ratio = ground_truth.get("drift_to_effect")
    return float(ratio) if ratio is not None and ratio > DRIFT_DOMINATED else None


def drift_warning(ratio: float) -> str:
    """The one-line warning of a drift-dominated ground truth (see :data:`DRIFT_DOMINATED`)."""
    return (f"drift-dominated ground truth: the reference drift is {ratio:.3g}x the median |leave-one-out effect| "
            f"(threshold {DRIFT_DOMINATED:g}): the re-training recipe moves the model more than removing a point "
            "does, so the correlations measure mostly drift, not influence (is the optimum stationary?)")


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


# -- validation ----------------------------------------------------------------------------------------------------
_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))


def _correlation_entry(value: Any) -> str | None:
    """What is wrong with a correlation record (``{"value", "interval", "undefined", ...}``), or ``None``."""
    if not isinstance(value, dict):
        return f"expected a mapping or null, got {type(value).__name__}"
    for field, kinds in (("value", _OPTIONAL_NUMBER), ("undefined", _OPTIONAL_TEXT)):
        problem = _kind(value.get(field), kinds)
        if problem:
            return f"{field}: {problem}"
    if value.get("value") != value.get("value"):
        return "value: NaN (an undefined correlation is null with its reason under 'undefined')"
    interval = value.get("interval")
    if interval is not None and (not isinstance(interval, list) or len(interval) != 2
                                 or any(_kind(bound, _NUMBER) for bound in interval)):
        return f"interval: expected two numbers or null, got {interval!r}"
    return None


_CORRELATION = ("correlation",)
_MAPPING = (dict,)

SCHEMA: dict[str, Any] = {
    "schema": (int,),
    "run_id": _TEXT,
    "date": _TEXT,
    "commit": _OPTIONAL_TEXT,
    "versions": {"torch": _TEXT},
    "device": {"type": _TEXT, "name": _OPTIONAL_TEXT},
    "task": {"name": _TEXT, "config": _MAPPING},
    "seed": (int,),
    "test_point": {"rule": _TEXT, "index": (int,), "loss": _NUMBER},
    "estimator": {"name": _TEXT, "hyperparameters": _MAPPING},
    "selection": {"kind": _TEXT, "size": (int,)},
    "status": STATUSES,
    "failure": _OPTIONAL_TEXT,
    "diagnostics": {
        "problem": {"n_train": (int,), "n_params": (int,), "weight_decay": _NUMBER, "gradient_norm": _NUMBER,
                    "converged": (bool,), "convergence_tol": _NUMBER, "top_eigenvalue": _NUMBER},
        "estimator": _MAPPING,
    },
    "ground_truth": {"protocol": _TEXT, "reference": _TEXT, "reference_drift": _NUMBER, "points": (int,),
                     "recipe": {"steps": (int,), "lr": _NUMBER, "batch_size": (int, type(None))}},
    "timings": {"prepare_s": _OPTIONAL_NUMBER, "query_s": _OPTIONAL_NUMBER},
}
"""The fields a record must have (what the leaderboard reads): a tuple of allowed types, of allowed values, or
``("correlation",)``; a dict for a nested mapping."""

OPTIONAL: dict[str, Any] = {
    "command": _OPTIONAL_TEXT,
    "dirty": (bool, type(None)),
    "diagnostics.problem.bottom_eigenvalue": _OPTIONAL_NUMBER,
    "ground_truth.seeds": (int,),
    "ground_truth.drift_to_effect": _OPTIONAL_NUMBER,
    "metrics": (dict, type(None)),
    "metrics.pearson": _CORRELATION,
    "metrics.spearman": _CORRELATION,
    "metrics.param_norm_pearson": _CORRELATION,
    "metrics.param_norm_spearman": _CORRELATION,
    "metrics.ihvp_relative_residual": _OPTIONAL_NUMBER,
    "metrics.ceiling": (dict, type(None)),
    "metrics.ceiling.pearson": _CORRELATION,
    "metrics.ceiling.spearman": _CORRELATION,
    "paper": (dict, type(None)),
    "paper.pearson": _OPTIONAL_NUMBER,
    "paper.spearman": _OPTIONAL_NUMBER,
}
"""Fields a record may leave out (or set to null where the types allow it), checked where present."""


def _kind(value: Any, kinds: tuple[Any, ...]) -> str | None:
    """What is wrong with ``value`` for the allowed ``kinds`` (types or literal values), or ``None``."""
    if kinds == _CORRELATION:
        return None if value is None else _correlation_entry(value)
    if all(isinstance(kind, type) for kind in kinds):
        if isinstance(value, bool) and bool not in kinds:  # JSON true is not a number
            ok = False
        else:
            ok = isinstance(value, kinds)
        if ok:
            return None
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
                 type(None): "null"}
        expected = " or ".join(dict.fromkeys(names.get(kind, kind.__name__) for kind in kinds
                                             if not (kind is int and float in kinds)))
        return f"expected {expected}, got {json.dumps(value)[:40]}"
    if value not in kinds:
        return f"expected one of {', '.join(map(repr, kinds))}, got {json.dumps(value)[:40]}"
    return None


def validate(record: Any) -> str | None:
    """The first thing wrong with ``record`` against the schema, as ``"FIELD: problem"``; ``None`` if it is valid."""
    if not isinstance(record, dict):
        return f"top level: expected a mapping (a JSON object), got {type(record).__name__}"
    if record.get("schema") != SCHEMA_VERSION:
        return f"schema: expected {SCHEMA_VERSION}, got {json.dumps(record.get('schema'))[:40]}"

    def check(mapping: dict[str, Any], spec: dict[str, Any], prefix: str) -> str | None:
        for field, kinds in spec.items():
            name = prefix + field
            if field not in mapping:
                return f"{name}: missing"
            value = mapping[field]
            if isinstance(kinds, dict):
                if not isinstance(value, dict):
                    return f"{name}: expected a mapping, got {json.dumps(value)[:40]}"
                problem = check(value, kinds, name + ".")
            else:
                problem = _kind(value, kinds)
                problem = problem and f"{name}: {problem}"
            if problem:
                return problem
        return None

    problem = check(record, SCHEMA, "")
    if problem:
        return problem
    for name, kinds in OPTIONAL.items():
        *parents, field = name.split(".")
        mapping: Any = record
        for parent in parents:
            mapping = mapping.get(parent) if isinstance(mapping, dict) else None
        if isinstance(mapping, dict) and field in mapping:
            problem = _kind(mapping[field], kinds)
            if problem:
                return f"{name}: {problem}"
    return None


def load(results_dir: Path, task: str | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Every valid record under ``results_dir`` (for ``task`` only, if given).

    A record that cannot be read or does not match the schema (:func:`validate`) is skipped with a one-line warning
    naming the file and the field, or raises :class:`~benchmark.errors.DataError` if ``strict``.
    """
    from benchmark.errors import DataError

    root = Path(results_dir)
    paths = sorted((root / task).glob("*.json") if task else root.glob("*/*.json"))
    out = []
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problem: str | None = f"unreadable: {getattr(error, 'strerror', None) or error}"
        else:
            problem = validate(record)
        if problem is None:
            out.append(record)
            continue
        message = f"bad result record {path}: {problem}"
        if strict:
            raise DataError(message + " (without --strict it is skipped)")
        log.warning("%s; skipping it", message)
    return out
