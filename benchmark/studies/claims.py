"""The paper's claims, decided by rules declared in the study YAML and evaluated on the study's CSV files.

A rule never holds a verdict, only how to compute one. Kinds (``where``, ``a`` and ``b`` are row filters: column ->
value or list of values; only rows with status ``ok`` and a defined ``y`` count):

- ``trend`` {x, y, direction: increasing|decreasing, where, by, min_rho=0.5}: the Spearman rank correlation between
  ``x`` and the mean of ``y`` at each ``x`` (the mean over seeds) has the claimed sign and magnitude ``>= min_rho``,
  in every group of ``by`` columns.
- ``greater`` {y, a, b, where, by, min_fraction=1}: the mean of ``y`` over rows ``a`` exceeds the mean over rows ``b``;
  with ``by``, compared at each value of the ``by`` columns, in at least ``min_fraction`` of them.
- ``gap_trend`` {x, y, a, b, direction, where, min_rho=0.5}: the gap ``mean(a) - mean(b)`` at each ``x`` has the
  claimed trend in ``x``.
- ``value`` {y, expect, tolerance, where, by, stat=mean}: ``stat`` (mean, min or max) of ``y`` (of its means per
  ``by`` group, if given) lies within ``tolerance`` of the paper's ``expect``.
- ``fraction`` {y, op: <|>, threshold, where, min_fraction=1}: at least ``min_fraction`` of the rows have
  ``y op threshold``.

Any rule may read ``table: points`` (one row per scored training point) instead of the default ``rows``. The rule
kinds and their fields (:data:`RULES`, :func:`check_rule`) are part of the declaration,
:mod:`benchmark.studies.declaration`, which checks them when it reads a study.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmark.contracts import records as records_module
from benchmark.studies.declaration import RULES, Claim, Panel, Study, check_rule
from benchmark.studies.tables import read_table, record_points, record_row

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RULES",
    "VERDICTS",
    "NotEvaluable",
    "Verdict",
    "check_rule",
    "caveats",
    "evaluate",
    "evaluate_study",
    "matches",
    "needed_points",
    "panel_verdicts",
    "rule_text",
    "select",
    "study_tables",
]

VERDICTS = ("agrees", "disagrees", "not evaluable", "not run")


class NotEvaluable(Exception):
    """The data cannot decide the rule (no rows match, too few x values, a missing column)."""


# -- selecting rows -------------------------------------------------------------------------------------------------
def matches(column: pd.Series, wanted: Any) -> np.ndarray:
    """Which values of ``column`` equal ``wanted`` (a value or a list; numbers compared to 1e-9 relative; ``None``, a
    YAML ``null``, matches the empty cells a swept ``None`` leaves in the CSV)."""
    values = wanted if isinstance(wanted, list) else [wanted]
    numeric = column.dtype.kind in "iuf"
    mask = np.zeros(len(column), dtype=bool)
    for value in values:
        if value is None:
            mask |= column.isna().to_numpy()
        elif isinstance(value, bool) or column.dtype.kind == "b":
            mask |= (column.astype(str) == str(value)).to_numpy()
        elif numeric and isinstance(value, (int, float)):
            mask |= np.isclose(column.to_numpy(dtype=float), float(value), rtol=1e-9, atol=0.0)
        else:
            mask |= (column.astype(str) == str(value)).to_numpy()
    return mask


def select(frame: pd.DataFrame, where: dict[str, Any] | None) -> pd.DataFrame:
    """The rows of ``frame`` with status ``ok`` (where there is a status) matching every filter of ``where``."""
    if "status" in frame.columns:
        frame = frame[frame["status"] == "ok"]
    for column, wanted in (where or {}).items():
        if column not in frame.columns:
            raise NotEvaluable(f"no column {column!r}")
        frame = frame[matches(frame[column], wanted)]
    return frame


def _values(frame: pd.DataFrame, y: str) -> pd.DataFrame:
    if y not in frame.columns:
        raise NotEvaluable(f"no column {y!r}")
    if frame.empty:
        raise NotEvaluable("no rows match")
    defined = frame[frame[y].notna()]
    if defined.empty:
        reasons = sorted(set(frame["undefined"].dropna().astype(str))) if "undefined" in frame.columns else []
        why = f": {'; '.join(reasons)}" if reasons else ""
        raise NotEvaluable(f"{y} is undefined in the {len(frame)} matching row(s){why}")
    return defined


def _describe(where: dict[str, Any]) -> str:
    return ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in where.items())


def _by(rule: dict[str, Any]) -> list[str]:
    by = rule.get("by") or []
    return [by] if isinstance(by, str) else list(by)


def _rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    if len(x) < 3:
        raise NotEvaluable(f"only {len(x)} x values")
    if np.ptp(y) == 0:
        return 0.0
    return float(stats.spearmanr(x, y)[0])


def _trend_ok(rho: float, direction: str, min_rho: float) -> bool:
    return (rho <= -min_rho) if direction == "decreasing" else (rho >= min_rho)


def _groups(frame: pd.DataFrame, by: list[str]) -> list[tuple[str, pd.DataFrame]]:
    if not by:
        return [("", frame)]
    for column in by:
        if column not in frame.columns:
            raise NotEvaluable(f"no column {column!r}")
    out = []
    for key, group in frame.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(f"{c}={v}" for c, v in zip(by, key)), group))
    return out


# -- the rules ------------------------------------------------------------------------------------------------------
def _trend(rule: dict[str, Any], frame: pd.DataFrame) -> tuple[bool, str]:
    x, y, direction = rule["x"], rule["y"], rule["direction"]
    min_rho = float(rule.get("min_rho", 0.5))
    frame = _values(select(frame, rule.get("where")), y)
    if x not in frame.columns:
        raise NotEvaluable(f"no column {x!r}")
    results = []
    for label, group in _groups(frame, _by(rule)):
        means = group.groupby(x)[y].mean().sort_index()
        rho = _rank_correlation(means.index.to_numpy(dtype=float), means.to_numpy(dtype=float))
        first, last = means.iloc[0], means.iloc[-1]
        results.append((label, rho, f"{first:.3g} at {x}={means.index[0]:g} to {last:.3g} at {means.index[-1]:g}"))
    agrees = all(_trend_ok(rho, direction, min_rho) for _, rho, _ in results)
    text = "; ".join(
        f"{label + ': ' if label else ''}rank correlation {rho:+.2f} ({span})" for label, rho, span in results
    )
    return agrees, text


def _side_means(rule: dict[str, Any], frame: pd.DataFrame, side: str, key: list[str]) -> pd.Series:
    part = _values(select(select(frame, rule.get("where")), rule[side]), rule["y"])
    if not key:
        return part[rule["y"]]
    for column in key:
        if column not in part.columns:
            raise NotEvaluable(f"no column {column!r}")
    return part.groupby(key)[rule["y"]].mean()


def _greater(rule: dict[str, Any], frame: pd.DataFrame) -> tuple[bool, str]:
    by = _by(rule)
    a, b = _side_means(rule, frame, "a", by), _side_means(rule, frame, "b", by)
    names = f"{_describe(rule['a'])} against {_describe(rule['b'])}"
    if not by:
        agrees = bool(a.mean() > b.mean())
        return agrees, f"mean {a.mean():.3g} ({len(a)} rows) against {b.mean():.3g} ({len(b)} rows), {names}"
    common = a.index.intersection(b.index)
    if len(common) == 0:
        raise NotEvaluable(f"no {'/'.join(by)} value has rows on both sides")
    wins = int((a[common] > b[common]).sum())
    needed = float(rule.get("min_fraction", 1.0))
    agrees = wins / len(common) >= needed
    return agrees, (
        f"greater at {wins} of {len(common)} {'/'.join(by)} values (mean {a[common].mean():.3g} against "
        f"{b[common].mean():.3g}), {names}"
    )


def _gap_trend(rule: dict[str, Any], frame: pd.DataFrame) -> tuple[bool, str]:
    x = rule["x"]
    a, b = _side_means(rule, frame, "a", [x]), _side_means(rule, frame, "b", [x])
    common = a.index.intersection(b.index).sort_values()
    gap = (a[common] - b[common]).to_numpy(dtype=float)
    rho = _rank_correlation(common.to_numpy(dtype=float), gap)
    agrees = _trend_ok(rho, rule["direction"], float(rule.get("min_rho", 0.5)))
    return agrees, (
        f"gap {gap[0]:+.3g} at {x}={common[0]:g} to {gap[-1]:+.3g} at {x}={common[-1]:g}, rank "
        f"correlation with {x} {rho:+.2f} ({_describe(rule['a'])} minus {_describe(rule['b'])})"
    )


def _value(rule: dict[str, Any], frame: pd.DataFrame) -> tuple[bool, str]:
    y, stat = rule["y"], rule.get("stat", "mean")
    frame = _values(select(frame, rule.get("where")), y)
    by = _by(rule)
    values = frame.groupby(by)[y].mean() if by else frame[y]
    value = float(getattr(values, stat)())
    spread = f" ± {values.std(ddof=1):.2g} s.d." if stat == "mean" and len(values) > 1 else ""
    over = f"{len(values)} {'/'.join(by)} values" if by else f"{len(values)} rows"
    agrees = abs(value - float(rule["expect"])) <= float(rule["tolerance"])
    return agrees, f"{stat} {value:.3g}{spread} over {over} (paper {rule['expect']:g}, tolerance {rule['tolerance']:g})"


def _fraction(rule: dict[str, Any], frame: pd.DataFrame) -> tuple[bool, str]:
    y, op, threshold = rule["y"], rule["op"], float(rule["threshold"])
    frame = _values(select(frame, rule.get("where")), y)
    values = frame[y].to_numpy(dtype=float)
    hits = int((values < threshold).sum() if op == "<" else (values > threshold).sum())
    needed = float(rule.get("min_fraction", 1.0))
    return hits / len(values) >= needed, f"{hits} of {len(values)} rows have {y} {op} {threshold:g}"


EVALUATORS = {"trend": _trend, "greater": _greater, "gap_trend": _gap_trend, "value": _value, "fraction": _fraction}


def rule_text(rule: dict[str, Any]) -> str:
    """A one-line description of a rule, for captions."""
    fields = ", ".join(f"{k}={_describe(v) if isinstance(v, dict) else v}" for k, v in rule.items() if k != "kind")
    return f"{rule['kind']}({fields})"


@dataclasses.dataclass
class Verdict:
    """A claim decided on measured data."""

    study: str
    panel: str
    claim: Claim
    verdict: str
    measured: str
    source: str


def evaluate(rule: dict[str, Any], tables: dict[str, pd.DataFrame | None]) -> tuple[str, str]:
    """``(verdict, measured)`` of ``rule`` on ``tables`` (``rows`` and ``points`` frames, ``None`` when absent);
    ``measured`` ends with the rule's :func:`caveats` where it has any."""
    frame = tables.get(rule.get("table", "rows"))
    if frame is None:
        return "not run", "no results"
    try:
        agrees, measured = EVALUATORS[rule["kind"]](rule, frame)
    except NotEvaluable as reason:
        return "not evaluable", str(reason)
    if isinstance(measured, str) and "nan" in measured.split():
        return "not evaluable", measured
    caveat = caveats(rule, frame)
    return ("agrees" if agrees else "disagrees"), measured + (f"; {caveat}" if caveat else "")


def read_rows(rule: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` that ``rule`` reads: those matching its ``where`` (and its ``a`` or ``b`` side, where it
    compares two) with a defined ``y``."""
    frame = _values(select(frame, rule.get("where")), rule["y"])
    sides = [rule[side] for side in ("a", "b") if side in rule]
    if not sides:
        return frame
    # by index, not by value: two read rows with equal cells are still two rows
    return frame[frame.index.isin([i for side in sides for i in select(frame, side).index])]


def unconverged(rows: pd.DataFrame) -> pd.Series:
    """Which rows sit on an optimum that fails the runner's convergence check (a results table's ``converged``
    column; a table without it has none)."""
    import pandas as pd

    if "converged" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["converged"].astype(str).str.lower() == "false"


def caveats(rule: dict[str, Any], frame: pd.DataFrame) -> str:
    """What weakens a verdict, counted over the rows ``rule`` reads (:func:`read_rows`): rows on an optimum that fails
    the runner's convergence check (influence functions assume a stationary point) and rows whose ground truth is
    drift-dominated (``drift_to_effect`` above :data:`benchmark.contracts.records.DRIFT_DOMINATED`: re-training moves
    the test loss more than removing a point does). Empty where neither occurs or the table lacks the columns (the
    ``points`` table)."""
    import pandas as pd

    rows = read_rows(rule, frame)
    found = []
    off_optimum = int(unconverged(rows).sum())
    if off_optimum:
        found.append(f"{off_optimum} of {len(rows)} rows on a non-stationary optimum (above the convergence check)")
    if "drift_to_effect" in rows.columns:
        ratios = pd.to_numeric(rows["drift_to_effect"], errors="coerce")  # empty cells: no ratio, no caveat
        drifting = int(ratios.map(records_module.is_drift_dominated).sum())
        if drifting:
            found.append(f"{drifting} of {len(rows)} rows drift-dominated")
    return "caveat: " + ", ".join(found) if found else ""


def study_tables(study: Study, studies_dir: Path, results_dir: Path | None = None) -> tuple[dict[str, Any], str]:
    """The study's tables and where they come from: its CSV files under ``studies_dir``, else the result records of
    its task under ``results_dir`` that match the study's points (e.g. MNIST leaderboard runs), else nothing."""
    import pandas as pd

    csv_path = Path(studies_dir) / f"{study.name}.csv"
    if csv_path.exists():
        points_path = csv_path.with_name(f"{study.name}-points.csv")
        points = read_table(points_path) if points_path.exists() else None
        return {"rows": read_table(csv_path), "points": points}, str(csv_path)
    task_dir = Path(results_dir) / study.task if results_dir is not None else None
    if task_dir is None or not task_dir.is_dir():
        return {"rows": None, "points": None}, "-"
    found = []
    for record in records_module.load(task_dir.parent, study.task):
        config = record["task"]["config"]
        if all(_same(config.get(k), v) for k, v in study.base.items()) and all(
            any(_same(config.get(k), v) for v in values) for k, values in study.sweep.items()
        ):
            found.append(record)
    if not found:
        return {"rows": None, "points": None}, f"{task_dir} (no record matches the study's points)"
    sweep, estimator_sweep = list(study.sweep), study.estimator_sweep
    rows = pd.DataFrame([record_row(r, study.name, -1, estimator_sweep) for r in found])
    points = pd.DataFrame([p for r in found for p in record_points(r, study.name, -1, sweep, estimator_sweep)])
    return {"rows": rows, "points": points if len(points) else None}, f"{task_dir} ({len(found)} records)"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _point_matches(point: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether a study point satisfies the filters of ``where`` on the options it has (others are ignored)."""
    for column, wanted in where.items():
        if column in point and not any(
            _same(point[column], v) for v in (wanted if isinstance(wanted, list) else [wanted])
        ):
            return False
    return True


def needed_points(study: Study, rule: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's points a rule reads: those matching its ``where`` and, if it has them, ``a`` or ``b``."""
    out = []
    for point in study.points():
        sides = [rule[k] for k in ("a", "b") if k in rule]
        if _point_matches(point, rule.get("where") or {}) and (
            not sides or any(_point_matches(point, s) for s in sides)
        ):
            out.append({k: point[k] for k in study.sweep})
    return out


def _coverage(study: Study, rule: dict[str, Any], rows: pd.DataFrame) -> tuple[int, int]:
    """How many of the points a rule needs have rows (from records), of how many."""
    needed = needed_points(study, rule)
    have = {tuple(str(v) for v in key) for key in rows[list(study.sweep)].itertuples(index=False, name=None)}
    covered = sum(tuple(str(p[k]) for k in study.sweep) in have for p in needed)
    return covered, len(needed)


def evaluate_study(study: Study, studies_dir: Path, results_dir: Path | None = None) -> list[Verdict]:
    """Every claim of ``study`` decided on its tables (see :func:`study_tables`).

    Decided on result records instead of the study's CSV, a claim is "not run" unless the records cover every point
    of the sweep that its rule reads (so that one default run cannot stand for a whole curve).
    """
    tables, source = study_tables(study, studies_dir, results_dir)
    from_records = tables["rows"] is not None and not source.endswith(".csv")
    out = []
    for panel, claim in study.claims():
        covered, needed = _coverage(study, claim.rule, tables["rows"]) if from_records else (0, 0)
        if from_records and covered < needed:
            verdict, measured = "not run", f"the records cover {covered} of the {needed} points this claim needs"
        else:
            verdict, measured = evaluate(claim.rule, tables)
        out.append(Verdict(study.name, panel.name, claim, verdict, measured, source))
    return out


def panel_verdicts(verdicts: list[Verdict], panel: Panel) -> list[Verdict]:
    """The verdicts of one panel's claims."""
    return [v for v in verdicts if v.panel == panel.name]
