"""``bench study``: run declared studies (:mod:`benchmark.studies.run`) and print the files written and each claim's
verdict; ``--list``: every declared study and the plugin that ships it; ``--plot-only``: redraw the figures."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pluggy

from benchmark.common import config as configuration
from benchmark.common.errors import UsageError
from benchmark.common.paths import published_dir, results_home
from benchmark.contracts.plugins import Registry
from benchmark.studies import figures
from benchmark.studies.claims import evaluate_study
from benchmark.studies.declaration import Study, declared_studies, find_study, load_study
from benchmark.studies.run import DEFAULT_OUTPUT_DIR, StudyOptions, run_study

log = logging.getLogger("bench")

HELP = "run a declared sweep (tasks/studies/NAME.yaml): CSV + figures"


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(item) for item in configuration.split_names(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --seeds {value!r}: expected comma-separated integers") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"bad --seeds {value!r}: expected non-negative integers")
    return seeds


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench study``."""
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="studies under tasks/studies/ (see --list) or paths to .yaml files, run in this order",
    )
    parser.add_argument("--list", action="store_true", help="list the declared studies and exit")
    parser.add_argument(
        "--estimator",
        "--estimators",
        dest="estimators",
        type=configuration.split_names,
        help="comma-separated estimators, replacing the study's (plugins' too, with -p)",
    )
    parser.add_argument("--seeds", type=_seeds, help="comma-separated seeds, replacing the study's")
    parser.add_argument(
        "--selection",
        "--selections",
        dest="selections",
        type=configuration.split_names,
        help="which training points to score, replacing the study's",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME.FIELD=VALUE",
        help="a task option for every point (not a swept one) or an estimator hyperparameter",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where the CSV files and figures go (default: studies/ beside the results directory, "
        "$XDG_DATA_HOME/bench/studies or ~/.local/share/bench/studies)",
    )
    parser.add_argument(
        "--publish", action="store_true", help=f"write the repository's committed {DEFAULT_OUTPUT_DIR} instead"
    )
    parser.add_argument("--cache-dir", type=Path, help="cache directory (default $BENCH_CACHE_DIR or ~/.cache/bench)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, help="torch threads on a CPU (default: the task's choice)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from the existing CSV files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def output_dir(args: argparse.Namespace) -> Path:
    """``--output-dir``; with ``--publish`` the committed studies; else ``studies/`` in the user's results home."""
    if args.publish:
        if args.output_dir is not None:
            raise UsageError(
                f"--publish writes {published_dir() / 'studies'}; it cannot be combined with "
                f"--output-dir {args.output_dir}"
            )
        return published_dir() / "studies"
    return args.output_dir if args.output_dir is not None else results_home() / "studies"


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench study``."""
    if not args.list:
        args.output_dir = output_dir(args)
    if args.list:
        for name, declared in declared_studies(pm).items():
            study = load_study(declared.path)
            runs = len(study.points()) * len(study.seeds)
            settings = "".join(f" ({e}: {len(v)} settings)" for e, v in study.variants().items())
            print(f"{name:<22} {study.task:<8} {runs:>4} runs  {study.title}{settings}  [plugin {declared.plugin}]")
        return 0
    if not args.names:
        raise UsageError(f"no study given: bench study NAME (choices: {', '.join(declared_studies(pm))}) or --list")
    studies = [find_study(name, pm=pm) for name in args.names]
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"bad --threads {args.threads}: expected a positive integer")
    for study in studies:
        _run_command(study, args, registry, pm)
    return 0


def _run_command(study: Study, args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> None:
    if args.plot_only:
        files = figures.plot_study(study, args.output_dir)
    else:
        options = StudyOptions(
            estimators=args.estimators,
            seeds=args.seeds,
            selections=args.selections,
            overrides=configuration.parse_set(args.overrides),
            output_dir=args.output_dir,
            cache_dir=args.cache_dir,
            device=args.device,
            threads=args.threads,
            progress=not args.no_progress,
            plugins=list(args.plugins),
        )
        result = run_study(study, registry, pm, options)
        files = result.files
        trained = "" if result.optima_trained is None else f", {result.optima_trained} optima trained"
        log.info("study %s: %d rows in %.1f s%s", study.name, len(result.rows), result.seconds, trained)
    for path in files:
        print(path)
    for verdict in evaluate_study(study, args.output_dir):
        print(f"{verdict.claim.figure}: {verdict.claim.text}: {verdict.verdict} ({verdict.measured})")
