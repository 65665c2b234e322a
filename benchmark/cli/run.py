"""``bench run``: run estimators on a task and score them against leave-one-out re-training
(:class:`~benchmark.evaluation.runner.Run`); print this run's results, write its records, re-render its task's
leaderboard. Its exit status: see :mod:`benchmark.cli`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pluggy

from benchmark.cli import leaderboard
from benchmark.cli.shared import DEFAULT_RESULTS_HELP, add_problem_options, report_error, run_config
from benchmark.common import config as configuration
from benchmark.common.errors import UsageError
from benchmark.common.paths import published_dir, writable_directory
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry
from benchmark.evaluation.leaderboard import preparation_cell
from benchmark.evaluation.runner import Run

log = logging.getLogger("bench")

HELP = "run estimators on a task and score them"


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench run``, plugins' options (``bench_addoption``) included."""
    add_problem_options(parser)
    parser.add_argument(
        "--estimator",
        "--estimators",
        dest="estimators",
        type=configuration.split_names,
        help="comma-separated estimator names (default: all registered)",
    )
    parser.add_argument(
        "--selection",
        "--selections",
        dest="selections",
        type=configuration.split_names,
        help="which training points to score: top (by |estimated influence|), top-positive, top-negative, random, "
        "pNN (nearest the NN-th percentile of the estimated influence) (default top,random)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help=f"where result records go (default {DEFAULT_RESULTS_HELP}); the leaderboard goes beside it",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="write to the repository's committed leaderboards: "
        "records under leaderboards/results, the table leaderboards/<task>.md",
    )
    parser.add_argument("--no-leaderboard", action="store_true", help="do not re-render the task's leaderboard")
    pm.hook.bench_addoption.call_historic(kwargs={"parser": parser})


def _correlation(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    if entry.get("value") is None:
        return str(entry.get("undefined") or "undefined")
    return f"{entry['value']:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary(written: list[dict[str, Any]]) -> str:
    """This run's results as a Markdown table (the leaderboard holds every run's)."""
    rows = []
    for record in written:
        metrics = record.get("metrics") or {}
        residual = metrics.get("ihvp_relative_residual")
        residual_text = f"{residual:.1e}" if residual is not None else metrics.get("ihvp_residual_undefined", "-")
        rows.append(
            {
                "estimator": f"`{record['estimator']['name']}`",
                "selection": f"{record['selection']['kind']} {record['selection']['size']}"
                + (f" ({truth})" if (truth := record["ground_truth"].get("kind", "loo")) not in ("loo", "lds") else ""),
                "Pearson": _correlation(metrics.get("pearson")),
                "Spearman": _correlation(metrics.get("spearman")),
                "‖Δθ‖ Spearman": _correlation(metrics.get("param_norm_spearman")),
                "iHVP residual": residual_text,
                "prepare s": preparation_cell(record["timings"]),
                "query s": _seconds(record["timings"].get("query_s")),
                "status": "ok" if record["status"] == "ok" else f"{record['status']}: {record['failure']}",
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench run``."""
    config = run_config(args, registry)
    run = Run(config, registry, pm)  # checks the results directory and the cache
    board_dir = published_dir() if args.publish else config.results_dir.parent
    if not args.no_leaderboard and not writable_directory(board_dir, "leaderboard directory"):
        raise UsageError(
            f"leaderboard directory {board_dir} is not writable: pass --results-dir DIR (the leaderboard "
            "goes beside it) or --no-leaderboard"
        )
    written = run.execute()
    failed = [r for r in written if r["status"] != "ok"]
    if written:
        print(f"{config.task}, run {written[0]['run_id']}:")
        print(_summary(written))
    print(f"records: {config.results_dir / config.task} ({len(run.written)} written)")
    if not args.no_leaderboard:
        for _, path, count in leaderboard.render(registry, config.results_dir, board_dir, config.task):
            print(f"leaderboard: {path} ({count} records)")
    where = "--publish" if args.publish else f"--results-dir {shlex.quote(str(config.results_dir))}"
    print(f"website of these results: bench site {where} (docs/site.md)")
    for record in failed:
        log.warning(
            "%s (%s): %s: %s",
            record["estimator"]["name"],
            record["selection"]["kind"],
            record["status"],
            record["failure"],
        )
    ratio = records.drift_dominated(written[0]["ground_truth"]) if written else None
    if ratio is not None:
        log.warning("%s", records.drift_warning(ratio))
    for failure in run.hook_failures:
        report_error(failure, args.verbose)
    if run.hook_failures:
        return 1
    if written and not any(r["status"] == "ok" for r in written):
        skipped = sum(r["status"] == "skipped" for r in written)
        what = (
            "failed"
            if not skipped
            else "were skipped"
            if skipped == len(written)
            else f"failed or were skipped ({len(written) - skipped} failed, {skipped} skipped)"
        )
        print(f"bench: error: no estimator produced a score: all {len(written)} records {what}", file=sys.stderr)
        return 1
    return 0
