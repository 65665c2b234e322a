"""Table 1 at two data sizes, for ``leaderboards/README.md``: each of the paper's Table 1 settings measured at the
``cpu`` preset (reduced training sets) and at the paper's own size, side by side, with what limits each measurement.

Read from the committed result records (``bench run --publish``): per setting (task, model, test point, weight decay)
and preset, the newest leave-one-out record of the paper's top-k selection for :data:`ESTIMATOR` over the whole model.
The *reading* column is derived from the records by the rules of :func:`reading`, never written by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmark.common import markdown
from benchmark.contracts import records

ESTIMATOR = "cg"
"""The estimator compared across sizes: Koh & Liang's conjugate-gradient influence at the protocol's damping, the
estimator every Table 1 row runs (``exact`` does not fit the larger models)."""

SIZES = ("cpu", "paper")
"""The presets compared: the reduced training sets and the paper's."""

CLOSE = 0.05
"""Spearman differences up to this are read as "about the same"."""

FLOAT32_STEPS = 2
"""A median leave-one-out effect within this many float32 steps of the test loss counts as rounding-limited (in
records whose test losses were evaluated in the problem's float32)."""


def _setting(record: dict[str, Any]) -> tuple[str, str, str, bool] | None:
    config = record["task"]["config"]
    if "model" not in config or config.get("preset") not in SIZES:
        return None
    return record["task"]["name"], config["model"], str(config.get("test_point")), bool(config.get("weight_decay"))


def newest(found: list[dict[str, Any]]) -> dict[tuple[tuple[str, str, str, bool], str], dict[str, Any]]:
    """Per (setting, preset): the newest ``ok`` leave-one-out ``top`` record of :data:`ESTIMATOR` over all layers."""
    out: dict[tuple[tuple[str, str, str, bool], str], dict[str, Any]] = {}
    for record in sorted(found, key=lambda r: r["date"]):
        estimator = record["estimator"]
        if (
            estimator["name"] != ESTIMATOR
            or estimator["hyperparameters"].get("layers", "all") != "all"
            or record["selection"]["kind"] != "top"
            or record["ground_truth"].get("kind", "loo") != "loo"
            or record["status"] != "ok"
        ):
            continue
        setting = _setting(record)
        if setting is not None:
            out[setting, record["task"]["config"]["preset"]] = record
    return out


def _value(record: dict[str, Any], metric: str) -> float | None:
    """A metric's value; ``ceiling`` is the Spearman one (``metrics.ceiling.spearman``)."""
    entry = record["metrics"].get(metric)
    if metric == "ceiling" and isinstance(entry, dict):
        entry = entry.get("spearman")
    value = entry.get("value") if isinstance(entry, dict) else entry
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def float32_steps(record: dict[str, Any]) -> float | None:
    """The median |leave-one-out effect| in float32 steps of the reference's test loss, for records whose test losses
    were evaluated in float32 (``None`` where they were in float64, or the record lacks the numbers)."""
    truth = record["ground_truth"]
    if records.test_loss_dtype(truth) != "float32":
        return None
    effect, loss = truth.get("median_abs_effect"), truth.get("reference_test_loss")
    if not effect or not loss:
        return None
    return effect / (2.0 ** (math.floor(math.log2(abs(loss))) - 23))


def limits(record: dict[str, Any]) -> list[str]:
    """What limits one measurement, from its record: a non-stationary optimum, a drift-dominated ground truth, a
    ground truth rounded to float32 steps of the test loss."""
    out = []
    problem = record["diagnostics"].get("problem", {})
    if problem.get("converged") is False:
        out.append(f"optimum not stationary (|grad| {problem['gradient_norm']:.2g})")
    ratio = records.drift_dominated(record["ground_truth"])
    if ratio is not None:
        out.append(f"drift {ratio:.3g}x the median effect")
    steps = float32_steps(record)
    if steps is not None and steps <= FLOAT32_STEPS:
        out.append(f"median effect {steps:.2g} float32 step{'' if steps == 1 else 's'} of the test loss")
    return out


def reading(cpu: dict[str, Any] | None, paper: dict[str, Any] | None) -> str:
    """What the two sizes say, by rule: the change of Spearman from the ``cpu`` preset to the paper's size, whether
    the seed ceiling falls with it, and what limits each measurement (:func:`limits`)."""
    parts = []
    if paper is None:
        parts.append("not run at the paper's size")
    elif cpu is not None:
        small, large = _value(cpu, "spearman"), _value(paper, "spearman")
        if small is None or large is None:
            parts.append("Spearman undefined at one size")
        else:
            change = large - small
            parts.append(
                "about the same at both sizes"
                if abs(change) <= CLOSE
                else f"{'lower' if change < 0 else 'higher'} at the paper's size by {abs(change):.2f}"
            )
        ceiling, small_ceiling = _value(paper, "ceiling"), _value(cpu, "ceiling")
        if ceiling is not None and small_ceiling is not None and ceiling < small_ceiling - CLOSE:
            parts.append(f"the seed ceiling falls too ({small_ceiling:.2f} to {ceiling:.2f})")
    for name, record in (("`cpu`", cpu), ("paper size", paper)):
        found = [] if record is None else limits(record)
        if found:
            parts.append(f"{name}: " + ", ".join(found))
    return "; ".join(parts)


def _cells(record: dict[str, Any] | None) -> list[str]:
    if record is None:
        return ["-", "-", "-"]
    spearman, ceiling = _value(record, "spearman"), _value(record, "ceiling")
    problem = record["diagnostics"].get("problem", {})
    return [
        "-" if spearman is None else f"{spearman:.3f}",
        "-" if ceiling is None else f"{ceiling:.3f}",
        f"{problem.get('n_train', 0):,}",
    ]


def sizes_markdown(results_dir: Path) -> list[str]:
    """The section of ``leaderboards/README.md`` comparing each Table 1 setting at the two sizes (empty where no
    setting has a record at the paper's size)."""
    found = newest(records.load(results_dir))
    settings = sorted({setting for setting, _ in found})
    if not any((setting, "paper") in found for setting in settings):
        return []
    rows = []
    for setting in settings:
        task, model, point, decay = setting
        cpu, paper = found.get((setting, "cpu")), found.get((setting, "paper"))
        reference = (paper or cpu or {}).get("paper") or {}
        rows.append(
            [
                task,
                model,
                {"max-loss": "A", "p50": "B"}.get(point, point),
                "yes" if decay else "no",
                "-" if reference.get("spearman") is None else f"{reference['spearman']:g}",
                *_cells(cpu),
                *_cells(paper),
                reading(cpu, paper),
            ]
        )
    header = [
        "task",
        "model",
        "test point",
        "weight decay",
        "paper",
        "`cpu`: Spearman",
        "ceiling",
        "training images",
        "paper size: Spearman",
        "ceiling",
        "training images",
        "reading",
    ]
    return [
        "## Table 1 at the `cpu` preset and at the paper's size",
        "",
        f"Spearman correlation of `{ESTIMATOR}` with leave-one-out re-training (top-k points, the protocol's damping), "
        "from the newest committed record of each setting and size; *ceiling* is the agreement of two re-training "
        "seeds with each other, the best any estimator can score against their mean. The *reading* is derived from "
        "the records (`benchmark/studies/sizes.py`): how Spearman moves from the reduced training set to the full "
        "one, and what limits each measurement. Settings not run at the paper's size list their cost in "
        "`leaderboards/paper-cost.md`.",
        "",
        markdown.table(header, rows),
        "",
    ]
