"""What several commands of the command line share: the options that determine a problem (``bench run`` and ``bench
gt``), the merge of a YAML config, ``--set`` and flags into a :class:`~benchmark.contracts.run_config.RunConfig`, the
results directory, and the one-line report of an error."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmark.common import config as configuration
from benchmark.common.errors import BenchError, UnknownNameError, UsageError
from benchmark.common.paths import RESULTS_ENV, default_results_dir, published_dir
from benchmark.contracts.plugins import Registry
from benchmark.contracts.run_config import DEFAULT_SELECTIONS, DEVICES, TRUTHS, RunConfig
from benchmark.groundtruth.executors import EXECUTORS

DEFAULT_RESULTS_HELP = f"${RESULTS_ENV}, else $XDG_DATA_HOME/bench/results or ~/.local/share/bench/results"
RUN_OPTIONS = (
    "task",
    "estimators",
    "seed",
    "device",
    "selections",
    "cache_dir",
    "results_dir",
    "gt_chunk_size",
    "gt_seeds",
    "truths",
    "lds_subsets",
    "lds_fraction",
    "lds_test_points",
    "pbrf_damping",
    "executor",
    "workers",
    "ray_address",
    "threads",
)
"""Top-level keys a YAML config may hold besides per-task and per-estimator sections."""


def add_problem_options(parser: argparse.ArgumentParser) -> None:
    """The options that determine a problem and its ground truth (``bench run`` and ``bench gt``)."""
    parser.add_argument("--task", help="task name (see bench list)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME.FIELD=VALUE",
        help="set a task or estimator option, e.g. lissa.scale=50 or iris.weight_decay=0",
    )
    parser.add_argument("--config", type=Path, help="YAML file of run options and per-task/estimator sections")
    parser.add_argument("--device", help=f"one of {', '.join(DEVICES)} (default cpu)")
    parser.add_argument("--seed", type=int, help="seed of the split, initialisation and random selection (default 0)")
    parser.add_argument("--cache-dir", type=Path, help="cache directory (default $BENCH_CACHE_DIR or ~/.cache/bench)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the task's data set is (its data_dir option; default $BENCH_DATA_DIR or ~/.cache/bench/data)",
    )
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download a missing data set where the network allows"
    )
    parser.add_argument(
        "--gt-chunk-size",
        type=int,
        help="leave-one-out models re-trained at once (default: the fastest that fits, timed)",
    )
    parser.add_argument(
        "--gt-seeds",
        type=int,
        help="ground-truth repeats with different re-training seeds "
        "(default 1; 2+ give the noise ceiling and bootstrap intervals)",
    )
    parser.add_argument(
        "--truth",
        "--truths",
        dest="truths",
        type=configuration.split_names,
        help=f"ground truths, comma-separated: {', '.join(TRUTHS)} (default loo): leave-one-out re-training, "
        "the linear datamodeling score over models trained from scratch on random subsets, and the proximal Bregman "
        "response (what a damped influence function approximates)",
    )
    parser.add_argument("--lds-subsets", type=int, help="lds: random training subsets (default 100)")
    parser.add_argument("--lds-fraction", type=float, help="lds: share of the training set per subset (default 0.5)")
    parser.add_argument(
        "--lds-test-points", type=int, help="lds: test points scored, a random sample (default 100, or all if fewer)"
    )
    parser.add_argument(
        "--pbrf-damping", type=float, help="pbrf: proximity weight (default: the task's protocol damping, else 0.001)"
    )
    parser.add_argument("--executor", help=f"where re-training runs: {', '.join(EXECUTORS)} (default local)")
    parser.add_argument("--workers", type=int, help="processes of --executor process (default: CPU count)")
    parser.add_argument("--ray-address", help="Ray cluster of --executor ray (default $RAY_ADDRESS, else local)")
    parser.add_argument("--threads", type=int, help="torch threads on a CPU (default: the task's choice, else torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_results_dir(args: argparse.Namespace, from_yaml: Any = None) -> Path:
    if getattr(args, "publish", False):
        given = (
            ("--results-dir", getattr(args, "results_dir", None)),
            ("--output-dir", getattr(args, "output_dir", None)),
            ("results_dir in --config", from_yaml),
        )
        for flag, value in given:
            if value is not None:
                raise UsageError(f"--publish writes {published_dir()}; it cannot be combined with {flag} {value}")
        return published_dir() / "results"
    value = getattr(args, "results_dir", None) or from_yaml
    return Path(value).expanduser() if value else default_results_dir()


def run_config(args: argparse.Namespace, registry: Registry) -> RunConfig:
    """Merge defaults, the YAML file, ``--set`` and explicit flags (in rising precedence)."""
    data = configuration.load_yaml(args.config) if args.config else {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in RUN_OPTIONS:
            continue
        if not isinstance(value, dict):
            raise UsageError(f"{args.config}: section {key!r} must be a mapping of options, not {value!r}")
        sections[key] = dict(value)
    overrides = configuration.parse_set(args.overrides)
    for namespace, values in overrides.items():
        sections.setdefault(namespace, {}).update(values)

    def option(name: str, default: Any, valid: Any, expected: str) -> Any:
        value = getattr(args, name, None)
        value = value if value is not None else data.get(name, default)
        if isinstance(value, str) and expected.startswith("names"):
            value = configuration.split_names(value)
        if value is not None and not valid(value):
            raise UsageError(f"bad {name}: {value!r} (expected {expected})")
        return value

    def names(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)

    def integer(minimum: int) -> Any:
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    def text(value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def directory(value: Any) -> bool:
        return isinstance(value, Path) or text(value)

    task = option("task", None, text, "a task name")
    if not task:
        raise UsageError(f"no task given: use --task NAME (choices: {', '.join(sorted(registry.tasks))})")
    scoring = args.command == "run"  # `bench gt` runs no estimator
    estimators = option("estimators", None, names, "names, comma-separated or a list") or list(registry.estimators)
    selections = option("selections", None, names, "names, comma-separated or a list") or list(DEFAULT_SELECTIONS)
    for name in sections:
        if name != task and name not in registry.estimators:
            raise UnknownNameError("task or estimator in --set/--config", name, [task, *registry.estimators])
    if getattr(args, "estimators", None) is not None:  # the command line runs a subset of the file's estimators
        for name in set(sections) - set(overrides) - set(estimators) - {task}:
            configuration.build(registry.estimator(name).Config, sections.pop(name), name)  # still checked
    for flag, field, value in (
        ("--data-dir", "data_dir", getattr(args, "data_dir", None)),
        ("--download", "download", getattr(args, "download", False) or None),
    ):
        if value is None:
            continue
        if field not in {f.name for f in dataclasses.fields(registry.task(task).Config)}:
            raise UsageError(f"{flag} does not apply to task {task!r}: it reads no data set from disk")
        sections.setdefault(task, {})[field] = str(value) if field == "data_dir" else True
    seed = option("seed", 0, integer(0), "a non-negative integer")
    chunk = option("gt_chunk_size", None, integer(1), "a positive integer")
    device = option("device", "cpu", text, f"one of {', '.join(DEVICES)}")
    cache_dir = option("cache_dir", None, directory, "a directory")
    results_dir = option("results_dir", None, directory, "a directory")
    gt_seeds = option("gt_seeds", 1, integer(1), "a positive integer")
    truths = option("truths", ["loo"], names, "names, comma-separated or a list")
    for truth in truths:
        if truth not in TRUTHS:
            raise UnknownNameError("ground truth", truth, TRUTHS)
    lds_subsets = option("lds_subsets", 100, integer(3), "an integer of at least 3")
    lds_fraction = option(
        "lds_fraction",
        0.5,
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
        "a number strictly between 0 and 1",
    )
    lds_test_points = option("lds_test_points", 100, integer(1), "a positive integer")
    pbrf_damping = option(
        "pbrf_damping",
        None,
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "a positive number",
    )
    executor = option("executor", "local", text, f"one of {', '.join(EXECUTORS)}")
    workers = option("workers", None, integer(1), "a positive integer")
    ray_address = option("ray_address", None, text, "a Ray address")
    threads = option("threads", None, integer(1), "a positive integer")
    return RunConfig(
        task=task,
        estimators=list(estimators) if scoring else [],
        task_options=sections.get(task, {}),
        estimator_options={k: v for k, v in sections.items() if k != task} if scoring else {},
        seed=seed,
        device=device,
        selections=list(selections),
        cache_dir=Path(cache_dir) if cache_dir else None,
        results_dir=resolve_results_dir(args, results_dir),
        progress=not args.no_progress,
        gt_chunk_size=chunk,
        gt_seeds=gt_seeds,
        truths=list(dict.fromkeys(truths)),
        lds_subsets=lds_subsets,
        lds_fraction=float(lds_fraction),
        lds_test_points=lds_test_points,
        pbrf_damping=None if pbrf_damping is None else float(pbrf_damping),
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        plugins=list(args.plugins),
        threads=threads,
        options=args,
        command=shlex.join(["bench", *args.argv]) if getattr(args, "argv", None) else None,
    )


def report_error(error: BenchError, verbose: bool) -> None:
    """Print ``error`` as one line; with ``-v`` first the traceback of the plugin exception behind it."""
    cause = getattr(error, "error", None) or error.__cause__
    if verbose and cause is not None:
        print("".join(traceback.format_exception(cause)).rstrip(), file=sys.stderr)
    print(f"bench: error: {error}", file=sys.stderr)
