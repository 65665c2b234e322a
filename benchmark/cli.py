"""The ``bench`` command line: ``list``, ``run``, ``gt``, ``leaderboard``, ``study``, ``report`` and ``timing``.

Exit status: 0 on success; 2 for a user's mistake (one line on stderr, ``bench: error: ...``, before any work);
1 for a failure found while working: a plugin's fault outside the scored steps (one line naming plugin and hook), an
unwritable cache or results directory, and a ``bench run`` in which **no estimator produced a score** (every record
failed or was skipped, an estimator that does not apply to the problem counting as no score: the records are still
written) or a reporting hook failed (every record is still written); 130 when interrupted. A run in which some
estimators fail or are skipped and at least one scores exits 0: the failures and skips are results.

Where results go: ``bench run`` writes its records to ``--results-dir``, else ``$BENCH_RESULTS_DIR``, else
``$XDG_DATA_HOME/bench/results`` (``~/.local/share/bench/results``), and its leaderboard beside that directory, never
into the source tree unless told: ``--publish`` writes the repository's committed ``leaderboards/results`` and
``leaderboards/<task>.md`` (``bench leaderboard --publish`` re-renders them).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import shlex
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import torch

from benchmark.common import config as configuration
from benchmark.common.cache import Cache
from benchmark.common.errors import BenchError, UnknownNameError, UsageError, user_interrupts
from benchmark.common.paths import RESULTS_ENV, default_results_dir, published_dir, writable_directory
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.run_config import DEFAULT_SELECTIONS, DEVICES, RunConfig
from benchmark.evaluation import leaderboard
from benchmark.evaluation import timing as timing_command
from benchmark.evaluation.runner import Run
from benchmark.groundtruth import engine as groundtruth
from benchmark.groundtruth.executors import EXECUTORS
from benchmark.studies import report as report_command
from benchmark.studies import run as study_command

log = logging.getLogger("bench")

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
    "executor",
    "workers",
    "ray_address",
    "threads",
)
"""Top-level keys a YAML config may hold besides per-task and per-estimator sections."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _plugin_args(argv: Sequence[str]) -> list[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-p", action="append", default=[])
    known, _ = pre.parse_known_args(list(argv))
    return known.p


def build_parser(pm: Any) -> Parser:
    """The full parser, plugin options included."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="load a plugin module by import path; -p no:NAME disables plugin NAME",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of failures)")
    parser = Parser(
        prog="bench",
        description="Benchmark influence-function estimators against leave-one-out re-training.",
        parents=[common],
    )
    sub = parser.add_subparsers(
        dest="command", parser_class=Parser, metavar="{list,run,gt,leaderboard,study,report,timing}"
    )
    sub.required = True

    listing = sub.add_parser("list", parents=[common], help="list tasks and estimators with their plugins")
    listing.add_argument("--options", action="store_true", help="also show every config field and its default")
    listing.add_argument("--models", action="store_true", help="also show each task's models and parameter counts")

    problem = argparse.ArgumentParser(add_help=False)  # what determines a problem and its ground truth
    problem.add_argument("--task", help="task name (see bench list)")
    problem.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME.FIELD=VALUE",
        help="set a task or estimator option, e.g. lissa.scale=50 or iris.weight_decay=0",
    )
    problem.add_argument("--config", type=Path, help="YAML file of run options and per-task/estimator sections")
    problem.add_argument("--device", help=f"one of {', '.join(DEVICES)} (default cpu)")
    problem.add_argument("--seed", type=int, help="seed of the split, initialisation and random selection (default 0)")
    problem.add_argument("--cache-dir", type=Path, help="cache directory (default $BENCH_CACHE_DIR or ~/.cache/bench)")
    problem.add_argument(
        "--data-dir",
        type=Path,
        help="where the task's data set is (its data_dir option; default $BENCH_DATA_DIR or ~/.cache/bench/data)",
    )
    problem.add_argument(
        "--download", action="store_true", help="let torchvision download a missing data set where the network allows"
    )
    problem.add_argument(
        "--gt-chunk-size",
        type=int,
        help="leave-one-out models re-trained at once (default: the fastest that fits, timed)",
    )
    problem.add_argument(
        "--gt-seeds",
        type=int,
        help="ground-truth repeats with different re-training seeds "
        "(default 1; 2+ give the noise ceiling and bootstrap intervals)",
    )
    problem.add_argument("--executor", help=f"where re-training runs: {', '.join(EXECUTORS)} (default local)")
    problem.add_argument("--workers", type=int, help="processes of --executor process (default: CPU count)")
    problem.add_argument("--ray-address", help="Ray cluster of --executor ray (default $RAY_ADDRESS, else local)")
    problem.add_argument(
        "--threads", type=int, help="torch threads on a CPU (default: the task's choice, else torch's)"
    )
    problem.add_argument("--no-progress", action="store_true", help="no progress bars")

    run = sub.add_parser("run", parents=[common, problem], help="run estimators on a task and score them")
    run.add_argument(
        "--estimator",
        "--estimators",
        dest="estimators",
        type=configuration.split_names,
        help="comma-separated estimator names (default: all registered)",
    )
    run.add_argument(
        "--selection",
        "--selections",
        dest="selections",
        type=configuration.split_names,
        help="which training points to score: top, random, pNN (nearest the NN-th percentile of "
        "the estimated influence) (default top,random)",
    )
    run.add_argument(
        "--results-dir",
        type=Path,
        help=f"where result records go (default {DEFAULT_RESULTS_HELP}); the leaderboard goes beside it",
    )
    run.add_argument(
        "--publish",
        action="store_true",
        help="write to the repository's committed leaderboards: "
        "records under leaderboards/results, the table leaderboards/<task>.md",
    )
    run.add_argument("--no-leaderboard", action="store_true", help="do not re-render the task's leaderboard")
    pm.hook.bench_addoption.call_historic(kwargs={"parser": run})

    gt = sub.add_parser("gt", parents=[common, problem], help="compute or top up ground truth, or summarise the cache")
    gt.add_argument(
        "--points",
        default="all",
        help="training points: all (default), random (the run's random "
        "selection) or a number N (the first N of the random order)",
    )
    gt.add_argument("--status", action="store_true", help="summarise what the cache holds and exit")

    board = sub.add_parser("leaderboard", parents=[common], help="render leaderboards from result records")
    board.add_argument("--task", help="only this task (default: every task with records)")
    board.add_argument("--results-dir", type=Path, help=f"default {DEFAULT_RESULTS_HELP}")
    board.add_argument("--output-dir", type=Path, help="where <task>.md goes (default: the results dir's parent)")
    board.add_argument(
        "--publish",
        action="store_true",
        help="re-render the repository's committed leaderboards: leaderboards/results -> leaderboards/<task>.md",
    )
    board.add_argument("--strict", action="store_true", help="a bad result record is an error (default: skipped)")

    study = sub.add_parser(
        "study", parents=[common], help="run a declared sweep (tasks/studies/NAME.yaml): CSV + figures"
    )
    study_command.add_arguments(study)
    report = sub.add_parser(
        "report",
        parents=[common],
        help="one HTML page of leaderboards, timings, study figures "
        "and claims; the claims table in leaderboards/README.md",
    )
    report_command.add_arguments(report)
    timing = sub.add_parser(
        "timing", parents=[common], help="the paper's Table 2 as Markdown from the asv suite's results (docs/timing.md)"
    )
    timing_command.add_arguments(timing)
    return parser


def _results_dir(args: argparse.Namespace, from_yaml: Any = None) -> Path:
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


def summary(cls: type) -> str:
    """The first paragraph of ``cls``'s docstring, on one line (``bench list``)."""
    text = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(text.split("\n\n")[0].split())


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> description from the ``Attributes:`` sections (Google style) of the docstrings of ``cls`` and
    its base classes, one line each (``bench list --options``)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if "__doc__" in vars(base):
            docs.update(_attributes_section(base.__doc__ or ""))
    return docs


def _attributes_section(docstring: str) -> dict[str, str]:
    lines = inspect.cleandoc(docstring).splitlines()
    docs: dict[str, str] = {}
    inside, indent, current = False, None, None  # current: the names the description being read belongs to
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:  # the next section or paragraph
            break
        match = re.match(r"(\w+(?:, *\w+)*)(?: \([^)]*\))?: (.*)", line.strip())
        if (indent is None or width == indent) and match:  # "name: text" or "a, b, c: text shared by all"
            indent, current = width, [name.strip() for name in match.group(1).split(",")]
            docs.update({name: match.group(2).strip() for name in current})
        elif current is not None and indent is not None and width > indent:
            docs.update({name: docs[name] + " " + line.strip() for name in current})
    return docs


def _protocol_dampings(registry: Registry) -> dict[str, float]:
    """The damping each task's protocol states at its default config
    (:attr:`benchmark.contracts.task.Protocol.damping`), for ``bench list --options``; a task whose protocol cannot be
    made without data is left out of this listing."""
    dampings = {}
    for name, entry in sorted(registry.tasks.items()):
        try:
            damping = entry.cls().protocol().damping
        except Exception:  # noqa: BLE001 - a listing; `bench run` reports a task's faults as one line
            continue
        if damping is not None:
            dampings[name] = damping
    return dampings


def _command_list(args: argparse.Namespace, registry: Registry) -> int:
    dampings = _protocol_dampings(registry) if args.options else {}
    protocol_note = (
        (
            "a task's protocol sets it unless --set or a YAML section does ("
            + ", ".join(f"{task}: {value:g}" for task, value in dampings.items())
            + "; other tasks: this default)"
        )
        if dampings
        else ""
    )
    for kind, entries in (("tasks", registry.tasks), ("estimators", registry.estimators)):
        print(f"{kind}:")
        for name, entry in sorted(entries.items()):
            print(f"  {name:<14} [{entry.plugin}] {summary(entry.cls)}")
            if args.models and kind == "tasks":
                for model, count in entry.cls.models().items():
                    print(f"      {name} model {model:<10} {count:>12,} parameters")
            if args.options:
                docs = attribute_docs(entry.cls.Config)
                for field in dataclasses.fields(entry.cls.Config):
                    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
                    meaning = docs.get(field.name)
                    print(f"      {name}.{field.name} = {default!r}" + (f": {meaning}" if meaning else ""))
                    if protocol_note and field.name == getattr(entry.cls, "damping_field", None):
                        print(f"        ({name}.{field.name}: {protocol_note})")
    return 0


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
        results_dir=_results_dir(args, results_dir),
        progress=not args.no_progress,
        gt_chunk_size=chunk,
        gt_seeds=gt_seeds,
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        plugins=list(args.plugins),
        threads=threads,
        options=args,
        command=shlex.join(["bench", *args.argv]) if getattr(args, "argv", None) else None,
    )


def _render(
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
                "selection": f"{record['selection']['kind']} {record['selection']['size']}",
                "Pearson": _correlation(metrics.get("pearson")),
                "Spearman": _correlation(metrics.get("spearman")),
                "‖Δθ‖ Spearman": _correlation(metrics.get("param_norm_spearman")),
                "iHVP residual": residual_text,
                "prepare s": _seconds(record["timings"].get("prepare_s")),
                "query s": _seconds(record["timings"].get("query_s")),
                "status": "ok" if record["status"] == "ok" else f"{record['status']}: {record['failure']}",
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _command_run(args: argparse.Namespace, registry: Registry, pm: Any) -> int:
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
        for _, path, count in _render(registry, config.results_dir, board_dir, config.task):
            print(f"leaderboard: {path} ({count} records)")
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
        _report(failure, args.verbose)
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


def _report(error: BenchError, verbose: bool) -> None:
    """Print ``error`` as one line; with ``-v`` first the traceback of the plugin exception behind it."""
    cause = getattr(error, "error", None) or error.__cause__
    if verbose and cause is not None:
        print("".join(traceback.format_exception(cause)).rstrip(), file=sys.stderr)
    print(f"bench: error: {error}", file=sys.stderr)


def _command_gt(args: argparse.Namespace, registry: Registry, pm: Any) -> int:
    if args.status:
        cache = Cache(args.cache_dir)
        writable_directory(cache.root, "cache directory")  # only read here: a file is an error, read-only is fine
        rows = groundtruth.cache_status(cache)
        if not rows:
            print(f"no ground truth under {cache.root / 'loo'}")
            return 0
        print(f"ground truth under {cache.root / 'loo'}:")
        print(pd.DataFrame(rows).to_markdown(index=False))
        return 0
    if not (args.points in ("all", "random") or (args.points.isdigit() and int(args.points) > 0)):
        raise UsageError(f"bad --points {args.points!r}: expected all, random or a positive number")
    config = run_config(args, registry)
    run = Run(config, registry, pm)
    with run.write_errors():
        return _ground_truth(args, config, run)


def _ground_truth(args: argparse.Namespace, config: RunConfig, run: Run) -> int:
    problem, protocol, test_index, _ = run.build_problem()
    order = torch.randperm(problem.n_train, generator=torch.Generator().manual_seed(config.seed)).tolist()
    if args.points == "all":
        points = list(range(problem.n_train))
    elif args.points == "random":
        points = order[: min(protocol.eval_size, problem.n_train)]
    else:
        points = order[: int(args.points)]
    executor = run.executor()
    for ground_truth in run.ground_truths(problem, protocol, test_index):
        ground_truth.effects(points, executor)
        stats = ground_truth.stats
        print(
            f"seed {ground_truth.recipe.seed}: {len(points)} points for test point {test_index}: {stats.cached} "
            f"cached, {stats.computed} computed, {stats.corrupt} corrupt recomputed, {stats.seconds:.1f} s "
            f"({ground_truth.directory})"
        )
    return 0


def _command_leaderboard(args: argparse.Namespace, registry: Registry) -> int:
    results_dir = _results_dir(args)
    if not results_dir.is_dir():
        raise UsageError(f"no results directory {str(results_dir)!r}: run `bench run` first or pass --results-dir")
    output_dir = published_dir() if args.publish else args.output_dir or results_dir.parent
    if not writable_directory(output_dir, "leaderboard directory"):
        raise UsageError(f"leaderboard directory {output_dir} is not writable: pass --output-dir DIR")
    for text, path, count in _render(registry, results_dir, output_dir, args.task, args.strict):
        print(text)
        print(f"leaderboard: {path} ({count} records)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bench`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torch's forward-mode AD scripts its decompositions on first use and warns about its own deprecated API
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    logging.basicConfig(format="bench: %(message)s", level=logging.INFO, stream=sys.stderr, force=True)
    verbose = any(arg in ("-v", "--verbose") for arg in argv)
    try:
        with user_interrupts():
            return _main(argv)
    except BenchError as error:
        _report(error, verbose)
        return error.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted (finished ground-truth entries are cached; rerun to resume)", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    pm = plugin_manager(_plugin_args(argv))
    registry = Registry(pm)
    args = build_parser(pm).parse_args(argv)
    args.argv = argv
    if args.verbose:
        logging.getLogger("bench").setLevel(logging.DEBUG)
    if args.command == "list":
        return _command_list(args, registry)
    if args.command == "run":
        return _command_run(args, registry, pm)
    if args.command == "gt":
        return _command_gt(args, registry, pm)
    if args.command == "study":
        return study_command.command(args, registry, pm)
    if args.command == "report":
        return report_command.command(args, pm)
    if args.command == "timing":
        return timing_command.command(args)
    return _command_leaderboard(args, registry)


if __name__ == "__main__":
    sys.exit(main())
