"""``bench gt``: compute or top up the ground truth of a task's problem in the cache, without running an estimator
(``--truth loo``: leave-one-out models for ``--points``; ``--truth loo-scratch``: the same from scratch; ``--truth
pbrf``: their proximal Bregman responses; ``--truth lds``: the datamodeling score's subset models);
``--status``: summarise what the cache holds."""

from __future__ import annotations

import argparse

import pandas as pd
import pluggy
import torch

from benchmark.cli.shared import add_problem_options, run_config
from benchmark.common.cache import Cache
from benchmark.common.errors import UsageError
from benchmark.common.paths import writable_directory
from benchmark.contracts.plugins import Registry
from benchmark.contracts.run_config import RunConfig
from benchmark.evaluation.runner import Run
from benchmark.groundtruth.pbrf import PbrfGroundTruth, ProximalGroundTruth
from benchmark.groundtruth.scratch import ScratchGroundTruth
from benchmark.groundtruth.status import cache_status, subset_status

HELP = "compute or top up ground truth, or summarise the cache"


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench gt``."""
    add_problem_options(parser)
    parser.add_argument(
        "--points",
        default="all",
        help="training points: all (default), random (the run's random "
        "selection) or a number N (the first N of the random order)",
    )
    parser.add_argument("--status", action="store_true", help="summarise what the cache holds and exit")


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench gt``."""
    if args.status:
        cache = Cache(args.cache_dir)
        writable_directory(cache.root, "cache directory")  # only read here: a file is an error, read-only is fine
        tables = [
            ("leave-one-out ground truth", "loo", cache_status(cache)),
            ("linear-datamodeling subset models", "lds", subset_status(cache)),
            *(
                (kind.title, kind.kind, cache_status(cache, kind))
                for kind in (PbrfGroundTruth, ProximalGroundTruth, ScratchGroundTruth)
            ),
        ]
        if not any(rows for _, _, rows in tables):
            print(f"no ground truth under {cache.root}")
        for title, folder, rows in tables:
            if rows:
                print(f"{title} under {cache.root / folder}:")
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
    if "lds" in config.truths:
        for subsets in run.subset_ground_truths(problem):
            missing = subsets.missing()
            executor = run.executor()
            computed = (subsets.compute(missing) if executor is None else executor(subsets, missing)) if missing else 0
            print(
                f"lds seed {subsets.train_seed}: {subsets.design.subsets} subset models of {subsets.design.fraction:g} "
                f"of the training set: {subsets.design.subsets - len(missing)} cached, {computed} trained, "
                f"{subsets.stats.corrupt} corrupt retrained ({subsets.cache.root / 'lds'})"
            )
        if set(config.truths) <= {"lds"}:
            return 0
    order = torch.randperm(problem.n_train, generator=torch.Generator().manual_seed(config.seed)).tolist()
    if args.points == "all":
        points = list(range(problem.n_train))
    elif args.points == "random":
        points = order[: min(protocol.eval_size, problem.n_train)]
    else:
        points = order[: int(args.points)]
    executor = run.executor()
    ground_truths = [
        ground_truth
        for truth in config.truths
        if truth != "lds"
        for ground_truth in run.removal_ground_truths(truth, problem, protocol, test_index)
    ]
    for ground_truth in ground_truths:
        ground_truth.effects(points, executor)
        stats = ground_truth.stats
        if isinstance(ground_truth, PbrfGroundTruth):
            what = f"{ground_truth.kind} damping {ground_truth.solver.damping:g}"
        elif isinstance(ground_truth, ScratchGroundTruth):
            what = f"from scratch, seed {ground_truth.train_seed}"
        else:
            what = f"seed {ground_truth.recipe.seed}"
        print(
            f"{what}: {len(points)} points for test point {test_index}: {stats.cached} "
            f"cached, {stats.computed} computed, {stats.corrupt} corrupt recomputed, {stats.seconds:.1f} s "
            f"({ground_truth.directory})"
        )
    return 0
