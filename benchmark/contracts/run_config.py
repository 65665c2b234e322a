"""What a ``bench run`` is asked to do: :class:`RunConfig`, the contract between the command line (or a YAML config,
or Python), the plugins' hooks (:mod:`benchmark.contracts.hookspecs`) and :mod:`benchmark.evaluation.runner`, which
executes it.

It lives apart from the runner so that the hook specifications, a contract, import nothing from the runner.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pluggy

from benchmark.common.paths import default_results_dir

DEFAULT_SELECTIONS = ("top", "random")
"""The selections of a run that names none (see :data:`benchmark.evaluation.selections.SELECTIONS`)."""
DEVICES = ("cpu", "cuda", "auto")
TRUTH_SUMMARIES = {
    "loo": "leave-one-out re-training from the optimum for each selected training point (the paper's protocol)",
    "lds": "linear datamodeling score over models trained from scratch on random subsets, many test points",
    "pbrf": "proximal Bregman response of each selected point: what a damped influence function approximates",
    "loo-scratch": "leave-one-out with every model trained from scratch, one initialisation per --gt-seeds",
    "prox": "converged proximal leave-one-out response, between loo and pbrf",
}
"""What ``bench list`` says of each ground truth."""
TRUTHS = tuple(TRUTH_SUMMARIES)
"""Ground truths a run can score against: ``loo`` (:mod:`benchmark.groundtruth.engine`), ``lds``
(:mod:`benchmark.groundtruth.lds`), ``pbrf`` and ``prox`` (:mod:`benchmark.groundtruth.pbrf`), ``loo-scratch``
(:mod:`benchmark.groundtruth.scratch`); :data:`TRUTH_SUMMARIES` says what each is."""


@dataclasses.dataclass
class RunConfig:
    """A resolved ``bench run``.

    Attributes:
        task: task name.
        estimators: estimator names, in order.
        task_options: the task's config fields that differ from its defaults.
        estimator_options: per estimator name, its hyperparameters that differ from the defaults.
        seed: seeds the data split, the initialisation and the random selection.
        device: ``cpu``, ``cuda`` or ``auto``.
        selections: which training points are scored (keys of :data:`benchmark.evaluation.selections.SELECTIONS`).
        cache_dir: cache directory (default :func:`benchmark.common.cache.default_cache_dir`).
        results_dir: where result records are written (default :func:`benchmark.common.paths.default_results_dir`).
        progress: show progress bars.
        gt_chunk_size: leave-one-out models re-trained at once (``None``: chosen by timing).
        gt_seeds: ground-truth repeats with different re-training seeds (noise ceiling and intervals need 2+); for
            ``lds``, the training seeds of the subset models.
        truths: which ground truths to score against (:data:`TRUTHS`), in order.
        lds_subsets: ``lds``: how many random subsets (each trained from scratch, once per ``gt_seeds``).
        lds_fraction: ``lds``: the share of the training set each subset keeps.
        lds_test_points: ``lds``: how many test points are scored (a random sample drawn with ``seed``; all of
            them if the test set is smaller).
        pbrf_damping: ``pbrf`` and ``prox``: the proximity weight ``lambda`` (default: the task protocol's damping, else
            :data:`benchmark.groundtruth.pbrf.DEFAULT_DAMPING`).
        executor: where re-training runs: ``local`` (this process), ``process`` or ``ray``.
        workers: processes of the ``process`` executor (default: the CPU count).
        ray_address: the Ray cluster of the ``ray`` executor (default ``$RAY_ADDRESS``, else a local one).
        plugins: the ``-p`` arguments, passed on to remote workers.
        threads: torch intra-op threads on a CPU (``None``: the task's ``cpu_threads``, else torch's default).
        options: values of options added by plugins (``bench_addoption``).
        pluginmanager: the run's plugin manager, so a plugin can register a stateful object at configure time.
        command: the command line that made this run, recorded with its results (``None`` when run from Python).
    """

    task: str
    estimators: list[str]
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    estimator_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    selections: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_SELECTIONS))
    cache_dir: Path | None = None
    results_dir: Path = dataclasses.field(default_factory=default_results_dir)
    progress: bool = True
    gt_chunk_size: int | None = None
    gt_seeds: int = 1
    truths: list[str] = dataclasses.field(default_factory=lambda: ["loo"])
    lds_subsets: int = 100
    lds_fraction: float = 0.5
    lds_test_points: int = 100
    pbrf_damping: float | None = None
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    plugins: list[str] = dataclasses.field(default_factory=list)
    threads: int | None = None
    options: argparse.Namespace = dataclasses.field(default_factory=argparse.Namespace)
    pluginmanager: pluggy.PluginManager | None = None
    command: str | None = None
