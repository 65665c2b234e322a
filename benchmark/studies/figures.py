"""Study figures: one PNG per panel, drawn with matplotlib's Agg backend from the study's CSV files.

``line`` panels plot the mean of ``y`` against ``x`` for each series, with error bars of one standard deviation over
the rows at that point (the seeds); ``scatter`` panels plot one dot per row (e.g. per scored training point), with
the diagonal ``y = x``. A line panel whose ``x`` is a swept estimator field (``estimator_sweep``) draws each series
that has no value of it (an estimator that does not sweep it) as a dashed horizontal line at its mean, with a band of
its spread over the seeds: the references the swept estimator is read against.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmark.common.errors import UsageError
from benchmark.studies.claims import matches, select, unconverged
from benchmark.studies.declaration import Panel, Study
from benchmark.studies.tables import read_table

if TYPE_CHECKING:
    import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(columns: list[str], key: Any) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={v}" for c, v in zip(columns, key))


def _named_empty_cells(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with the empty cells of ``columns`` (the series and facet columns) as the text ``None``: a swept
    ``None`` (a YAML ``null``, e.g. full-batch re-training) or an estimator without that field (first-order has no
    ``curvature``). Grouping drops empty keys, which would leave those rows out of the figure without a word."""
    named = frame
    for column in columns:
        if named[column].isna().any():
            named = named.assign(**{column: named[column].where(named[column].notna(), "None").astype(str)})
    return named


def _positions(study: Study, column: str, values: pd.Series) -> tuple[dict[Any, float], list[str] | None]:
    """x positions: the values themselves when numeric, else their order in the sweep (or sorted)."""
    if values.dtype.kind in "iuf":
        return {v: float(v) for v in values.unique()}, None
    swept = study.sweep.get(column) or [v for f in study.estimator_sweep.values() for v in f.get(column, [])]
    declared = list(dict.fromkeys(str(v) for v in swept))
    order = [v for v in declared if v in set(values.astype(str))]
    order += sorted(set(values.astype(str)) - set(order))
    return {v: float(i) for i, v in enumerate(order)}, order


def _check_columns(study: Study, index: int, panel: Panel, frame: pd.DataFrame, table: Path) -> None:
    wanted = {
        "x": [panel.x],
        "y": [panel.y],
        "series": panel.series,
        "facet": [panel.facet] if panel.facet else [],
        "where": list(panel.where),
    }
    for field, columns in wanted.items():
        for column in columns:
            if column not in frame.columns:
                raise UsageError(
                    f"{study.path}: field 'panels[{index}].{field}': no column {column!r} in {table} "
                    f"(columns: {', '.join(map(str, frame.columns))})"
                )


def plot_panel(study: Study, index: int, frame: pd.DataFrame, table: Path, path: Path) -> Path:
    """Draw panel ``index`` of ``study`` from ``frame`` (read from ``table``) into ``path``."""
    panel = study.panels[index]
    _check_columns(study, index, panel, frame, table)
    matching = _named_empty_cells(select(frame, panel.where), [*panel.series, *([panel.facet] if panel.facet else [])])
    data = matching[matching[panel.y].notna() & matching[panel.x].notna()]
    references = _references(study, panel, matching)
    left_out = _left_out(frame, panel, len(data) + len(references))
    keys = [()]
    if panel.series:
        keys = [k if isinstance(k, tuple) else (k,) for k, _ in matching.groupby(panel.series, sort=True)]
    plt = _pyplot()
    shown = len(data) + len(references)
    facet_values = set(data[panel.facet]) | set(references[panel.facet]) if panel.facet else set()
    facets = sorted(facet_values, key=str) if panel.facet and shown else [None]
    figure, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 3.9), squeeze=False)
    for ax, facet in zip(axes[0], facets):
        part = data if facet is None else data[data[panel.facet] == facet]
        positions, ticks = _positions(study, panel.x, data[panel.x])
        groups = list(part.groupby(panel.series, sort=True)) if panel.series else [((), part)]
        spacing = np.diff(sorted(set(positions.values()))).min() if len(positions) > 1 else 1.0
        for key, group in groups:
            label = _label(panel.series, key) or None
            # a series keeps its colour and shift whether or not other series have values in this panel
            number = keys.index(key) if key in keys else 0
            style = {"color": f"C{number % 10}"}
            # overlapping error bars of several series are told apart by a small horizontal shift
            shift = (number - (len(keys) - 1) / 2) * 0.04 * spacing if panel.xscale == "linear" else 0.0
            xs = group[panel.x].map(lambda v: positions[v if ticks is None else str(v)] + shift)
            # a point over any row on a non-stationary optimum is drawn hollow: influence assumes a stationary point
            stationary = ~unconverged(group)
            hollow = {"facecolors": "white", "edgecolors": style["color"]}
            if panel.kind == "scatter":
                ax.scatter(xs[stationary], group[panel.y][stationary], s=12, alpha=0.7, label=label, **style)
                ax.scatter(xs[~stationary], group[panel.y][~stationary], s=12, **hollow)
                continue
            placed = group.assign(_x=xs)
            stats = placed.groupby("_x")[panel.y].agg(["mean", "std", "min", "max"]).sort_index()
            if panel.yscale == "log":  # a standard deviation can reach below zero; the range cannot
                spread = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]]
            else:
                spread = stats["std"].fillna(0.0)
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=spread,
                marker="o",
                markersize=4,
                capsize=3,
                linewidth=1.4,
                label=label,
                **style,
            )
            off_optimum = placed[~stationary]["_x"].unique()
            ax.scatter(off_optimum, stats.loc[off_optimum, "mean"], s=22, zorder=3, **hollow)
        part_references = references if facet is None else references[references[panel.facet] == facet]
        reference_groups = list(part_references.groupby(panel.series, sort=True)) if panel.series else []
        if len(part_references) and not panel.series:
            reference_groups = [((), part_references)]
        for key, group in reference_groups:
            key = key if isinstance(key, tuple) else (key,)
            number = keys.index(key) if key in keys else 0
            values = group[panel.y].astype(float)
            mean = float(values.mean())
            if panel.yscale == "log":
                low, high = float(values.min()), float(values.max())
            else:
                spread_one = float(values.std()) if len(values) > 1 else 0.0
                low, high = mean - spread_one, mean + spread_one
            label = f"{_label(panel.series, key) or panel.y} (no {panel.x})"
            ax.axhline(mean, color=f"C{number % 10}", linestyle="--", linewidth=1.2, label=label)
            if high > low:
                ax.axhspan(low, high, color=f"C{number % 10}", alpha=0.12, linewidth=0)
        if panel.kind == "scatter" and len(part):
            low = float(np.nanmin(part[[panel.x, panel.y]].to_numpy(dtype=float)))
            high = float(np.nanmax(part[[panel.x, panel.y]].to_numpy(dtype=float)))
            ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--", label="y = x")
        if panel.hline is not None:
            ax.axhline(panel.hline, color="grey", linewidth=0.8, linestyle=":")
        if panel.xscale == "symlog":
            positive = [v for v in positions.values() if v > 0]
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
        else:
            ax.set_xscale(panel.xscale)
        if ticks is not None:  # after the scale, which resets the ticks
            ax.set_xticks(range(len(ticks)), ticks, rotation=30 if len(ticks) > 4 else 0)
        elif panel.xscale == "log" and panel.kind == "line":
            # a line panel's x is a sweep: its values, labelled as declared (a log axis over about one decade labels
            # its minor ticks too, and they overlap)
            from matplotlib.ticker import NullFormatter

            swept = sorted(set(positions.values()))
            ax.set_xticks(swept, [f"{v:g}" for v in swept], rotation=30 if len(swept) > 5 else 0)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale(panel.yscale)
        ax.set_xlabel(panel.x)
        ax.set_ylabel(panel.y)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        if facet is not None:
            ax.set_title(f"{panel.facet}={facet}", fontsize=10)
        if not len(part) and not len(part_references):
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title=", ".join(panel.series) if panel.series else None, title_fontsize=7)
    seeds = data["seed"].nunique() if "seed" in data.columns else 0
    note = f"{len(data)} points, {seeds} seeds"
    if panel.kind == "line":
        note = f"error bars: {spread_text(panel)} over {seeds} seeds"
        if len(references):
            note += f"; dashed: series without a {panel.x}, mean (band: {spread_text(panel)}) over their seeds"
    if unconverged(data).any():
        note += "; hollow markers: an optimum that fails the runner's convergence check (not stationary)"
    if left_out:
        note += f"; {left_out}"
    title = panel.title + (f" ({panel.figure})" if panel.figure else "")
    figure.suptitle("\n".join(textwrap.wrap(title, 58 * len(facets))), fontsize=11)
    figure.text(
        0.01,
        0.005,
        textwrap.fill(f"{study.name}: {note}", 95 * len(facets)),
        ha="left",
        va="bottom",
        fontsize=7,
        color="grey",
    )
    figure.tight_layout(rect=(0, 0.035, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
    return path


def _references(study: Study, panel: Panel, matching: pd.DataFrame) -> pd.DataFrame:
    """The rows a line panel draws as horizontal references: where ``x`` is a swept estimator field, the rows with a
    value of ``y`` but none of ``x`` in series that have no value of ``x`` at all (an estimator that does not sweep
    it); empty otherwise."""
    if panel.kind != "line" or panel.x not in study.estimator_columns:
        return matching.iloc[:0]
    rows = matching[matching[panel.y].notna() & matching[panel.x].isna()]
    if not panel.series or not len(rows):
        return rows if not matching[panel.x].notna().any() else rows.iloc[:0]
    with_x = {k if isinstance(k, tuple) else (k,) for k, _ in matching[matching[panel.x].notna()].groupby(panel.series)}
    keys = [k if isinstance(k, tuple) else (k,) for k in rows.set_index(panel.series).index]
    return rows[[key not in with_x for key in keys]]


def spread_text(panel: Panel) -> str:
    """What a line panel's error bars show."""
    return "min to max" if panel.yscale == "log" else "±1 s.d."


def _left_out(frame: pd.DataFrame, panel: Panel, plotted: int) -> str:
    """How many rows the panel's filter matches but cannot plot: failed runs and undefined values (e.g. a correlation
    over constant estimates), so that a missing point is never silent."""
    rows = frame
    for column, wanted in panel.where.items():
        rows = rows[matches(rows[column], wanted)]
    failed = int((rows["status"] != "ok").sum()) if "status" in rows.columns else 0
    undefined = len(rows) - failed - plotted
    parts = [f"{failed} failed" if failed else "", f"{undefined} without a value" if undefined else ""]
    return ", ".join(p for p in parts if p) + (f" (of {len(rows)} rows, not plotted)" if failed or undefined else "")


def panel_path(study: Study, panel: Panel, output_dir: Path) -> Path:
    """Where a panel's PNG goes."""
    return Path(output_dir) / f"{study.name}-{panel.name}.png"


def plot_study(study: Study, output_dir: Path) -> list[Path]:
    """Draw every panel of ``study`` from its CSV files under ``output_dir``; returns the PNG paths."""
    tables: dict[str, Path] = {
        "rows": Path(output_dir) / f"{study.name}.csv",
        "points": Path(output_dir) / f"{study.name}-points.csv",
    }
    frames: dict[str, pd.DataFrame] = {}
    out = []
    for index, panel in enumerate(study.panels):
        table = tables[panel.table]
        if panel.table not in frames:
            if not table.exists():
                raise UsageError(
                    f"no results for study {study.name!r}: {table} is missing (run `bench study {study.name}` first)"
                )
            frames[panel.table] = read_table(table)
        out.append(plot_panel(study, index, frames[panel.table], table, panel_path(study, panel, output_dir)))
    return out
