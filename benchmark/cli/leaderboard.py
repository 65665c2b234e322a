"""``bench leaderboard``: render every task's leaderboard (or one task's) from its result records; ``bench run``
re-renders its task's through :func:`render`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pluggy

from benchmark.cli.shared import DEFAULT_RESULTS_HELP, resolve_results_dir
from benchmark.common.errors import UsageError
from benchmark.common.paths import published_dir, writable_directory
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry
from benchmark.evaluation import leaderboard

HELP = "render leaderboards from result records"


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench leaderboard``."""
    parser.add_argument("--task", help="only this task (default: every task with records)")
    parser.add_argument("--results-dir", type=Path, help=f"default {DEFAULT_RESULTS_HELP}")
    parser.add_argument("--output-dir", type=Path, help="where <task>.md goes (default: the results dir's parent)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="re-render the repository's committed leaderboards: leaderboards/results -> leaderboards/<task>.md",
    )
    parser.add_argument("--strict", action="store_true", help="a bad result record is an error (default: skipped)")


def render(
    registry: Registry, results_dir: Path, output_dir: Path, task: str | None, strict: bool = False
) -> list[tuple[str, Path, int]]:
    """Render and write the leaderboard of ``task`` (or of every task); ``(text, path, records)`` for each."""
    tasks = [task] if task else sorted(p.name for p in results_dir.glob("*") if p.is_dir())
    if not tasks:
        raise UsageError(f"nothing to render: no result records under {str(results_dir)!r}")
    texts = []
    for name in tasks:
        found = records.load(results_dir, name, strict=strict)
        if not found:
            raise UsageError(f"no result records for task {name!r} under {results_dir}")
        defaults, reference_rows = None, []
        if name in registry.tasks:
            defaults = dataclasses.asdict(registry.tasks[name].cls.Config())
            reference_rows = registry.tasks[name].cls.reference_rows()
        estimator_defaults = {
            estimator: dataclasses.asdict(entry.cls.Config()) for estimator, entry in registry.estimators.items()
        }
        text = leaderboard.render(found, name, defaults, reference_rows, estimator_defaults)
        texts.append((text, leaderboard.write(text, output_dir, name), len(found)))
    return texts


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench leaderboard``."""
    results = resolve_results_dir(args)
    if not results.is_dir():
        raise UsageError(f"no results directory {str(results)!r}: run `bench run` first or pass --results-dir")
    output_dir = published_dir() if args.publish else args.output_dir or results.parent
    if not writable_directory(output_dir, "leaderboard directory"):
        raise UsageError(f"leaderboard directory {output_dir} is not writable: pass --output-dir DIR")
    for text, path, count in render(registry, results, output_dir, args.task, args.strict):
        print(text)
        print(f"leaderboard: {path} ({count} records)")
    return 0
