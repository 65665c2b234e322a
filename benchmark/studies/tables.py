"""A study's tables: the rows of ``NAME.csv`` (one per point x seed x estimator x selection x ground truth) and
``NAME-points.csv`` (one per scored training point), made from result records (:mod:`benchmark.contracts.records`),
written and read back.

:mod:`benchmark.studies.run` writes them; :mod:`benchmark.studies.claims` and :mod:`benchmark.studies.figures` read
them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from benchmark.common.errors import UsageError
from benchmark.contracts.task import Task
from benchmark.evaluation.estimation import variant_label
from benchmark.studies.declaration import Study

ROW_COLUMNS = (
    "study",
    "point",
    "seed",
    "estimator",
    "selection",
    "truth",
    "status",
    "failure",
    "task",
    "task_version",
    "test_point_index",
    "test_loss",
    "k",
    "pearson",
    "pearson_p",
    "spearman",
    "spearman_p",
    "spearman_ceiling",
    "undefined",
    "param_norm_pearson",
    "param_norm_spearman",
    "ihvp_residual",
    "top_eigenvalue",
    "bottom_eigenvalue",
    "gradient_norm",
    "converged",
    "n_params",
    "n_train",
    "gt_drift",
    "drift_to_effect",
    "median_abs_effect",
    "prepare_s",
    "query_s",
    "estimator_hyperparameters",
    "estimator_diagnostics",
    "commit",
    "dirty",
    "run_id",
)
"""The fixed columns of a study CSV; the task's config fields come after ``task_version``, and after them the fields
of the study's ``estimator_sweep`` (empty in the rows of an estimator that does not sweep them)."""
POINT_COLUMNS = (
    "train_index",
    "estimated",
    "retrained",
    "estimated_param_norm",
    "retrained_param_norm",
    "abs_log_norm_ratio",
)
"""Per-training-point columns of ``NAME-points.csv`` (after the study, point, seed, estimator, selection, truth and the
swept options, task and estimator ones); ``abs_log_norm_ratio`` is ``|log10(estimated / re-trained parameter-change
norm)|``."""
POINT_HEAD = ("study", "point", "seed", "estimator", "selection", "truth")
"""The first columns of ``NAME-points.csv``."""


def table_columns(study: Study, task_cls: type[Task]) -> dict[str, set[str]]:
    """The columns the study's tables will have: ``rows`` (the CSV) and ``points``."""
    config = [f.name for f in dataclasses.fields(task_cls.Config)]
    rows = set(ROW_COLUMNS) | {name if name not in ROW_COLUMNS else f"task_{name}" for name in config}
    points = {*POINT_HEAD, *study.sweep, *POINT_COLUMNS}
    return {"rows": rows | set(study.estimator_columns), "points": points | set(study.estimator_columns)}


def check_columns(study: Study, task_cls: type[Task]) -> None:
    """Every column a panel or a claim names exists in its table, and no swept estimator field is named as another
    column; :class:`UsageError` naming the field otherwise."""
    plain = table_columns(dataclasses.replace(study, estimator_sweep={}), task_cls)
    for estimator, swept in study.estimator_sweep.items():
        for field in swept:
            if field in plain["rows"] | plain["points"]:
                raise UsageError(
                    f"{study.path}: field 'estimator_sweep.{estimator}.{field}': {field!r} is already a column of the "
                    "study's tables (a task option or a result): it cannot be swept"
                )
    columns = table_columns(study, task_cls)
    for i, panel in enumerate(study.panels):
        named = {
            "x": [panel.x],
            "y": [panel.y],
            "series": panel.series,
            "facet": [panel.facet] if panel.facet else [],
            "where": list(panel.where),
        }
        for j, claim in enumerate(panel.claims):
            rule = claim.rule
            by = rule.get("by") or []
            named[f"claims[{j}].rule"] = [
                *(rule[k] for k in ("x", "y") if k in rule),
                *([by] if isinstance(by, str) else by),
                *(c for k in ("where", "a", "b") for c in rule.get(k, {})),
            ]
        for field, names in named.items():
            table = (
                panel.table
                if not field.startswith("claims")
                else panel.claims[int(field[7:].split("]")[0])].rule.get("table", "rows")
            )
            for name in names:
                if name not in columns[table]:
                    raise UsageError(
                        f"{study.path}: field 'panels[{i}].{field}': no column {name!r} in the "
                        f"{table} table (columns: {', '.join(sorted(columns[table]))})"
                    )


# -- tables ---------------------------------------------------------------------------------------------------------
def _correlation(metrics: dict[str, Any], name: str) -> tuple[float | None, float | None, str | None]:
    entry = (metrics or {}).get(name) or {}
    return entry.get("value"), entry.get("p_value"), entry.get("undefined")


def estimator_fields(
    record: dict[str, Any], estimator_sweep: dict[str, dict[str, list[Any]]] | None
) -> tuple[str, dict[str, Any]]:
    """A record's estimator and the values of the swept estimator fields (:attr:`Study.estimator_columns
    <benchmark.studies.declaration.Study.estimator_columns>`; ``None`` where its estimator does not sweep one): the
    record of a swept estimator is named by its label (``tracin[checkpoints=5]``,
    :func:`~benchmark.evaluation.estimation.variant_label`), made from its recorded hyperparameters."""
    name, hyperparameters = record["estimator"]["name"], record["estimator"]["hyperparameters"]
    columns = dict.fromkeys(field for fields in (estimator_sweep or {}).values() for field in fields)
    for estimator, fields in (estimator_sweep or {}).items():
        values = {field: hyperparameters.get(field) for field in fields}
        if name in (estimator, variant_label(estimator, values)):
            return estimator, {**columns, **values}
    return name, columns


def record_row(
    record: dict[str, Any], study: str, point: int, estimator_sweep: dict[str, dict[str, list[Any]]] | None = None
) -> dict[str, Any]:
    """One CSV row from a result record (see :mod:`benchmark.contracts.records`): task config, the swept estimator
    fields (:func:`estimator_fields`), metrics, diagnostics."""
    metrics = record.get("metrics") or {}
    estimator, swept = estimator_fields(record, estimator_sweep)
    problem = record["diagnostics"]["problem"]
    gt = record["ground_truth"]
    pearson, pearson_p, pearson_why = _correlation(metrics, "pearson")
    spearman, spearman_p, spearman_why = _correlation(metrics, "spearman")
    norm_pearson, _, _ = _correlation(metrics, "param_norm_pearson")
    norm_spearman, _, _ = _correlation(metrics, "param_norm_spearman")
    row: dict[str, Any] = {
        "study": study,
        "point": point,
        "seed": record["seed"],
        "estimator": estimator,
        "selection": record["selection"]["kind"],
        "truth": record["ground_truth"].get("kind", "loo"),
        "status": record["status"],
        "failure": record["failure"],
        "task": record["task"]["name"],
        "task_version": record["task"]["version"],
    }
    for key, value in sorted(record["task"]["config"].items()):  # sorted: cached records come back key-sorted
        row[key if key not in ROW_COLUMNS else f"task_{key}"] = value
    row.update(swept)
    row.update(
        {
            "test_point_index": record["test_point"]["index"],
            "test_loss": record["test_point"]["loss"],
            "k": record["selection"]["size"],
            "pearson": pearson,
            "pearson_p": pearson_p,
            "spearman": spearman,
            "spearman_p": spearman_p,
            "spearman_ceiling": ((metrics.get("ceiling") or {}).get("spearman") or {}).get("value"),
            "undefined": spearman_why or pearson_why,
            "param_norm_pearson": norm_pearson,
            "param_norm_spearman": norm_spearman,
            "ihvp_residual": metrics.get("ihvp_relative_residual"),
            "top_eigenvalue": problem.get("top_eigenvalue"),
            "bottom_eigenvalue": problem.get("bottom_eigenvalue"),
            "gradient_norm": problem.get("gradient_norm"),
            "converged": problem.get("converged"),
            "n_params": problem.get("n_params"),
            "n_train": problem.get("n_train"),
            "gt_drift": gt.get("reference_drift"),
            "drift_to_effect": gt.get("drift_to_effect"),
            "median_abs_effect": gt.get("median_abs_effect"),
            "prepare_s": record["timings"].get("prepare_s"),
            "query_s": record["timings"].get("query_s"),
            "estimator_hyperparameters": json.dumps(record["estimator"]["hyperparameters"], sort_keys=True),
            "estimator_diagnostics": json.dumps(record["diagnostics"].get("estimator") or {}, sort_keys=True),
            "commit": record.get("commit"),
            "dirty": record.get("dirty"),
            "run_id": record["run_id"],
        }
    )
    return row


def record_points(
    record: dict[str, Any],
    study: str,
    point: int,
    swept: list[str],
    estimator_sweep: dict[str, dict[str, list[Any]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per scored training point of a record (none for a failed record), with the swept task options
    ``swept`` and the swept estimator fields (:func:`estimator_fields`)."""
    points = record.get("points")
    if not points:
        return []
    config = record["task"]["config"]
    estimator, fields = estimator_fields(record, estimator_sweep)
    head = {
        "study": study,
        "point": point,
        "seed": record["seed"],
        "estimator": estimator,
        "selection": record["selection"]["kind"],
        "truth": record["ground_truth"].get("kind", "loo"),
        **{k: config[k] for k in swept},
        **fields,
    }
    estimated_norms = points.get("estimated_param_norm") or [None] * len(points["train_indices"])
    out = []
    for i, index in enumerate(points["train_indices"]):
        estimated_norm, retrained_norm = estimated_norms[i], points["retrained_param_norm"][i]
        ratio = None
        if estimated_norm and retrained_norm and estimated_norm > 0 and retrained_norm > 0:
            ratio = abs(math.log10(estimated_norm / retrained_norm))
        out.append(
            {
                **head,
                "train_index": index,
                "estimated": points["estimated"][i],
                "retrained": points["retrained"][i],
                "estimated_param_norm": estimated_norm,
                "retrained_param_norm": retrained_norm,
                "abs_log_norm_ratio": ratio,
            }
        )
    return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts; the union of their keys, in first-seen order, as columns); empty cells for ``None``."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})
    return path


def read_table(path: Path) -> Any:
    """A study CSV as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=True)
