"""What the site shows, as plain rows: every leaderboard row of a task, the best estimator per setting, the accuracy
against cost of each setting with its Pareto front, and the timing history of the asv suite across commits.

Rows come from the result records through the leaderboards' own helpers (:func:`leaderboard.sections` picks the
rows a leaderboard shows, :func:`leaderboard.differing` the hyperparameters that differ from the defaults,
:func:`leaderboard.reproducing_command` the command), and the timing history from asv's result files through
:mod:`benchmark.evaluation.asv_results`; nothing is computed here that a record or an asv file does not hold, except
sums of recorded times and which points are Pareto-optimal.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmark.evaluation import leaderboard
from benchmark.evaluation import timing as timing_module
from benchmark.evaluation.asv_results import AsvResults, load

LOO, LDS = "leave-one-out", "LDS"


@dataclasses.dataclass
class Defaults:
    """The current defaults a task's records are read against: the task's config and each estimator's."""

    task: Mapping[str, Any] | None = None
    estimators: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def record_file(record: Mapping[str, Any]) -> str:
    """The file name :func:`benchmark.contracts.records.write` gives ``record`` under its task's directory."""
    return f"{record['run_id']}-{record['estimator']['name']}-{record['selection']['kind']}.json"


def ground_truth(record: Mapping[str, Any]) -> str:
    """The ground truth's name: leave-one-out re-training (records without a ``kind``), ``LDS``, or another kind's
    name as the record gives it, in capitals (a ground truth added later is shown apart, never as leave-one-out)."""
    kind = record["ground_truth"].get("kind")
    return LOO if kind in (None, "loo") else LDS if kind == "lds" else str(kind).upper()


def varying(records: list[dict[str, Any]], defaults: Mapping[str, Any] | None) -> list[str]:
    """The task config fields whose values (completed with the task's defaults) differ between ``records``."""
    values: dict[str, set[str]] = {}
    for record in records:
        for key, value in leaderboard.completed(record["task"]["config"], defaults).items():
            values.setdefault(key, set()).add(repr(value))
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def configuration(record: Mapping[str, Any], fields: list[str], defaults: Mapping[str, Any] | None) -> str:
    """A short name of what was run: the values of the config ``fields`` that vary across the task's records, the
    seed and device where not the default ones; ``one configuration`` where nothing varies."""
    config = leaderboard.completed(record["task"]["config"], defaults)
    parts = [f"{key}={config.get(key)}" for key in fields]
    if record["seed"] != 0:
        parts.append(f"seed={record['seed']}")
    if record["device"]["type"] != "cpu":
        parts.append(f"device={record['device']['type']}")
    return ", ".join(parts) or "one configuration"


def _text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def _correlation(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    interval = entry.get("interval") or [None, None]
    return {
        "value": _number(entry.get("value")),
        "low": _number(interval[0]),
        "high": _number(interval[1]),
        "text": leaderboard.correlation_text(entry),
    }


def total_seconds(record: Mapping[str, Any]) -> float | None:
    """Preparation (with the extra models it trained) plus the query: what one score cost."""
    timings = record["timings"]
    query = timings.get("lds_query_s" if record["selection"]["kind"] == "lds" else "query_s")
    if timings.get("prepare_s") is None or query is None:
        return None
    return float(timings["prepare_s"]) + float(timings.get("models_s") or 0.0) + float(query)


def task_rows(records: list[dict[str, Any]], defaults: Defaults) -> list[dict[str, Any]]:
    """One row per record a leaderboard of these records shows (every estimator x configuration x selection x ground
    truth, the latest of repeats), flat, for the task's table, its download and its scatter plot."""
    rows = []
    fields = varying(records, defaults.task)
    for shown in leaderboard.sections(records, defaults.task, defaults.estimators):
        for record in sorted(shown, key=lambda r: (r["estimator"]["name"], r["selection"]["kind"])):
            metrics = record.get("metrics") or {}
            paper = record.get("paper") or {}
            timings = record["timings"]
            spearman, pearson = _correlation(metrics.get("spearman")), _correlation(metrics.get("pearson"))
            ceiling = (metrics.get("ceiling") or {}).get("spearman") or {}
            changed = leaderboard.differing(record, defaults.estimators)
            rows.append(
                {
                    "estimator": record["estimator"]["name"],
                    "configuration": configuration(record, fields, defaults.task),
                    "ground_truth": ground_truth(record),
                    "selection": f"{record['selection']['kind']} {record['selection']['size']}",
                    "selection_kind": record["selection"]["kind"],
                    "spearman": spearman["value"],
                    "spearman_low": spearman["low"],
                    "spearman_high": spearman["high"],
                    "spearman_text": spearman["text"],
                    "pearson": pearson["value"],
                    "pearson_low": pearson["low"],
                    "pearson_high": pearson["high"],
                    "pearson_text": pearson["text"],
                    "ceiling": _number(ceiling.get("value")),
                    "paper": _number(paper.get("spearman")),
                    "paper_source": paper.get("source") or "",
                    "paper_pearson": _number(paper.get("pearson")),
                    "param_norm_spearman_text": leaderboard.correlation_text(metrics.get("param_norm_spearman")),
                    "ihvp_residual_text": leaderboard.residual_text(metrics),
                    "prepare_s": _number(timings.get("prepare_s")),
                    "models_s": _number(timings.get("models_s")),
                    "query_s": _number(
                        timings.get("lds_query_s" if record["selection"]["kind"] == "lds" else "query_s")
                    ),
                    "total_s": total_seconds(record),
                    "status": record["status"],
                    "status_text": leaderboard.status_text(record),
                    "hyperparameters": _text(changed) or "defaults",
                    "hyperparameters_full": _text(record["estimator"]["hyperparameters"]) or "none",
                    "config_full": _text(record["task"]["config"]),
                    "command": leaderboard.reproducing_command(record, defaults.task),
                    "commit": (record.get("commit") or "unknown")[:10] + ("+dirty" if record.get("dirty") else ""),
                    "date": record["date"],
                    "record": f"records/{record['task']['name']}/{record_file(record)}",
                }
            )
    return rows


def headline(task: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and ground truth of ``task``: the estimator with the highest Spearman under the paper's
    protocol (each estimator's own top k for leave-one-out; the datamodeling score for LDS), among scored rows."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["status"] != "ok" or row["spearman"] is None or row["selection_kind"] not in ("top", "lds"):
            continue
        key = (row["configuration"], row["ground_truth"])
        counts[key] = counts.get(key, 0) + 1
        if key not in best or row["spearman"] > best[key]["spearman"]:
            best[key] = row
    return [
        {
            "task": task,
            "configuration": key[0],
            "ground_truth": key[1],
            "estimator": row["estimator"],
            "hyperparameters": row["hyperparameters"],
            "spearman": row["spearman"],
            "spearman_low": row["spearman_low"],
            "spearman_high": row["spearman_high"],
            "spearman_text": row["spearman_text"],
            "ceiling": row["ceiling"],
            "paper": row["paper"],
            "compared": counts[key],
            "page": f"task-{task}.html",
        }
        for key, row in sorted(best.items())
    ]


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which points are on the Pareto front of lower cost (first) and higher score (second): none cheaper or as
    cheap scores as high or higher, strictly better in one."""
    out = []
    for x, y in points:
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2 in points)
        out.append(not dominated)
    return out


def scatter(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per configuration and selection: each scored row's total time and Spearman, Pareto-optimal ones marked."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] != "ok" or row["spearman"] is None or not row["total_s"]:
            continue
        key = f"{row['configuration']} · {row['ground_truth']} ({row['selection']})"
        groups.setdefault(key, []).append(
            {
                "x": row["total_s"],
                "y": row["spearman"],
                "estimator": row["estimator"],
                "hyperparameters": row["hyperparameters"],
            }
        )
    for points in groups.values():
        for point, front in zip(points, pareto([(p["x"], p["y"]) for p in points])):
            point["pareto"] = front
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


# -- the timing history --------------------------------------------------------------------------------------------
def asv_files(asv_dir: Path) -> list[AsvResults]:
    """Every asv result file under ``asv_dir`` (asv's ``results_dir``: ``<machine>/<commit>-<env>.json``), in order
    of machine and commit date."""
    out: list[AsvResults] = []
    if not Path(asv_dir).is_dir():
        return out
    for machine in sorted(p for p in Path(asv_dir).iterdir() if (p / "machine.json").is_file()):
        found = []
        for path in sorted(machine.glob("*.json")):
            if path.name == "machine.json":
                continue
            commit, _, env = path.stem.partition("-")
            found.append(load(Path(asv_dir), machine.name, commit, env or None))
        out += sorted(found, key=lambda r: (r.date or 0, r.commit))
    return out


def _value(results: AsvResults, benchmark: str, *params: Any) -> float | None:
    value = results.value(benchmark, *params)
    return None if value is None else _number(value)


def timing_history(files: list[AsvResults]) -> list[dict[str, Any]]:
    """Per asv file (machine and commit), case, size and estimator: preparation and query time, peak host memory
    and Spearman, where the file holds them (a skipped, declined or failed benchmark is left empty)."""
    rows = []
    for results in files:
        cases = results.axis(timing_module.PREPARE, 0)
        estimators = results.axis(timing_module.PREPARE, 1)
        sizes = results.axis(timing_module.PREPARE, 2)
        for case in cases:
            for size in sizes:
                for name in estimators:
                    prepare = _value(results, timing_module.PREPARE, case, name, size)
                    query = _value(results, timing_module.QUERY, case, name, size)
                    memory = _value(results, timing_module.PEAKMEM, case, name, size)
                    spearman = _value(results, timing_module.SPEARMAN, case, name, size)
                    if prepare is None and query is None and memory is None and spearman is None:
                        continue
                    rows.append(
                        {
                            "machine": results.machine.get("machine", "?"),
                            "commit": results.commit[:8],
                            "date": results.date,
                            "case": f"{case} ({size})",
                            "estimator": name,
                            "prepare_s": prepare,
                            "query_s": query,
                            "total_s": None if prepare is None or query is None else prepare + query,
                            "peak_memory_mib": None if memory is None else memory / 2**20,
                            "spearman": spearman,
                        }
                    )
    return rows
