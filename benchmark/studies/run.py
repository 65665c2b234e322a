"""``bench study NAME``: a declared sweep of task options and estimator hyperparameters, run point by point through
:class:`~benchmark.evaluation.runner.Run`.

A study is a YAML declaration shipped by a plugin (hook ``bench_studies``; the built-in ones are under
``tasks/studies/``), parsed by :mod:`benchmark.studies.declaration`, whose docstring shows the format; ``bench study
--list`` shows every declared study and the plugin that ships it.

Every point and seed is one run: optima and leave-one-out ground truth come from the shared cache, and a finished
run's records are kept there too (keyed by its options, the settings of its swept estimators and a digest of the
code), so a rerun after an interruption redoes only the runs that had not finished, and a rerun with other estimator
options or settings re-trains nothing. Each run is claimed with a file lock before it starts, so several processes
running one study on one cache split its runs between them (each takes the next run no one holds, then waits for
the runs others hold, taking over one whose process died).

A run evaluates each estimator of the study's ``estimator_sweep`` once per setting, on the one problem and ground truth
it builds (``Run``'s ``variants``): each setting's records are named by its label, ``tracin[checkpoints=5]``, and its
row of the tables has the estimator's name and the swept values in their columns.

A task may offer two optional speed-ups, both declared on :class:`benchmark.Task` and used when a task overrides them:
:meth:`Task.train_many <benchmark.contracts.task.Task.train_many>` trains many optima into the cache at once (each equal
to the one its ``build`` trains), and :meth:`Task.descend <benchmark.contracts.task.Task.descend>` replaces
:func:`benchmark.numerics.training.descend` for the leave-one-out re-training.

Outputs (``--output-dir``, default ``studies/`` beside the user's results directory, ``~/.local/share/bench/studies``;
``--publish``: the committed ``leaderboards/studies``): ``NAME.csv`` with one row per point x seed x estimator setting
x selection (the resolved task config, the swept estimator fields, metrics, diagnostics, commit), ``NAME-points.csv``
with one row per scored training point when a panel plots them, and ``NAME-PANEL.png`` per panel. The per-run JSON
records go to the cache directory (``study-records/NAME``), not into the repository.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch
from filelock import FileLock

from benchmark.common import config as configuration
from benchmark.common import provenance
from benchmark.common.cache import Cache, digest
from benchmark.common.errors import UnknownNameError, UsageError
from benchmark.common.paths import results_home
from benchmark.contracts.plugins import Registry
from benchmark.contracts.run_config import RunConfig
from benchmark.contracts.task import BuildContext
from benchmark.evaluation.runner import Run, resolve_device
from benchmark.groundtruth.engine import GroundTruth, compute_claimed
from benchmark.studies import figures
from benchmark.studies.declaration import Study, check_estimator_sweep
from benchmark.studies.tables import check_columns, record_points, record_row, write_csv

log = logging.getLogger("bench")

DEFAULT_OUTPUT_DIR = Path("leaderboards") / "studies"
"""Where the committed study results are, in a source checkout (``bench study --publish`` writes them)."""


class _TaskGroundTruth(GroundTruth):
    """Ground truth whose re-training goes through the task's own ``descend`` (same recipe, same cache entries).

    The reference (no point removed) is re-trained in one batch with the leave-one-out models the request misses:
    one stacked model costs almost as much as many on a CPU, so this saves most of the reference's time.
    """

    def __init__(self, *args: Any, descend: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._task_descend = descend
        self._upcoming: list[int] = []
        self._ready: dict[int, Any] = {}

    def effects(self, removed: Sequence[int], executor: Any = None) -> Any:
        self._upcoming = self.missing(removed) if executor is None else []
        try:
            return super().effects(removed, executor)
        finally:
            self._upcoming, self._ready = [], {}

    def retrain(self, weights: Any, description: str) -> Any:
        removed = [(row == 0).nonzero().flatten().tolist() for row in weights]
        if all(len(r) == 1 and r[0] in self._ready for r in removed):
            return torch.stack([self._ready.pop(r[0]) for r in removed])
        if len(weights) == 1 and not removed[0] and self._upcoming:
            batch = torch.ones(
                1 + len(self._upcoming), self.problem.n_train, dtype=weights.dtype, device=weights.device
            )
            batch[torch.arange(1, len(batch)), torch.tensor(self._upcoming)] = 0.0
            thetas = self._descend(batch, f"re-training the reference and {len(self._upcoming)} models")
            self._ready = dict(zip(self._upcoming, thetas[1:]))
            return thetas[:1]
        return self._descend(weights, description)

    def _descend(self, weights: Any, description: str) -> Any:
        start = self.problem.theta.unsqueeze(0).expand(len(weights), -1)
        return self._task_descend(self.problem, start, weights, self.recipe, self.progress, description)


class StudyRun(Run):
    """A :class:`Run` that re-trains leave-one-out models with the task's own
    :meth:`~benchmark.contracts.task.Task.descend` when it overrides it (and, like any run, evaluates the settings of
    a study's ``estimator_sweep`` given as its ``variants``)."""

    def ground_truths(self, problem: Any, protocol: Any, test_index: int) -> list[GroundTruth]:
        plain = super().ground_truths(problem, protocol, test_index)
        if not type(self.task).overrides("descend") or self.config.executor != "local":
            return plain
        descend = self.task.descend
        return [
            _TaskGroundTruth(
                g.problem,
                g.recipe,
                self.cache,
                self.task.problem_key(self.config.seed),
                test_index,
                self.config.gt_chunk_size,
                self.config.progress,
                descend=descend,
            )
            for g in plain
        ]


@dataclasses.dataclass
class StudyOptions:
    """How to run a study (the command line's choices over the declaration's).

    Attributes:
        estimators, seeds, selections: replace the declared ones when given.
        overrides: ``--set`` values: task options (applied to every point) and estimator hyperparameters.
        output_dir: where the CSV files and figures go.
        cache_dir: the cache (optima, ground truth, and the per-run records under ``study-records/``).
        device, threads, progress, plugins: as for ``bench run``.
    """

    estimators: list[str] | None = None
    seeds: list[int] | None = None
    selections: list[str] | None = None
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    output_dir: Path = dataclasses.field(default_factory=lambda: _default_output_dir())
    cache_dir: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    plugins: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StudyResult:
    """What a study run wrote."""

    rows: list[dict[str, Any]]
    points: list[dict[str, Any]]
    files: list[Path]
    seconds: float
    optima_trained: int | None


def _resolved(
    study: Study, options: StudyOptions, registry: Registry
) -> tuple[list[str], dict[str, dict], list[int], list[str], dict[str, Any]]:
    estimators = options.estimators or study.estimators
    for name in estimators:
        registry.estimator(name)
    check_estimator_sweep(study, registry, estimators)
    estimator_options = {k: dict(v) for k, v in study.estimator_options.items() if k in estimators}
    fixed: dict[str, Any] = {}
    for namespace, values in options.overrides.items():
        if namespace == study.task:
            swept = sorted(set(values) & set(study.sweep))
            if swept:
                raise UsageError(f"--set {study.task}.{swept[0]}: {swept[0]!r} is swept by study {study.name!r}")
            fixed.update(values)
        elif namespace in registry.estimators:
            swept = sorted(set(values) & set(study.estimator_sweep.get(namespace, {})))
            if swept and namespace in estimators:
                raise UsageError(f"--set {namespace}.{swept[0]}: {swept[0]!r} is swept by study {study.name!r}")
            estimator_options.setdefault(namespace, {}).update(values)
        else:
            raise UnknownNameError("task or estimator in --set", namespace, [study.task, *registry.estimators])
    return (
        list(estimators),
        estimator_options,
        list(options.seeds or study.seeds),
        list(options.selections or study.selections),
        fixed,
    )


def code_digest(registry: Registry, estimators: Sequence[str], task: str) -> str:
    """The digest (:func:`benchmark.common.provenance.source_digest`: code, not docstrings or comments) of the harness,
    the built-in plugins and the modules of the task and estimators used (plugins' too): a finished run's records are
    reused only while none of it changed."""
    root = provenance.REPO  # the source checkout: harness and built-in plugins
    files = set(provenance.code_files(root))
    for cls in [registry.task(task), *(registry.estimator(name) for name in estimators)]:
        source = inspect.getsourcefile(cls)
        if source:
            files.add(Path(source))
    return provenance.source_digest(sorted(files, key=str), root)


def run_key(config: RunConfig, code: str, variants: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """What determines a run's records: its resolved options, the settings of its swept estimators (``variants``,
    see :class:`~benchmark.evaluation.runner.Run`) and the code (:func:`code_digest`)."""
    return {
        "task": config.task,
        "task_options": config.task_options,
        "estimators": config.estimators,
        "estimator_options": config.estimator_options,
        "estimator_variants": variants or {},
        "seed": config.seed,
        "device": config.device,
        "selections": config.selections,
        "gt_seeds": config.gt_seeds,
        "gt_chunk_size": config.gt_chunk_size,
        "truths": config.truths,
        "lds": [config.lds_subsets, config.lds_fraction, config.lds_test_points] if "lds" in config.truths else None,
        **({"pbrf_damping": config.pbrf_damping} if "pbrf" in config.truths else {}),
        "plugins": config.plugins,
        "code": code,
    }


def run_study(study: Study, registry: Registry, pm: pluggy.PluginManager, options: StudyOptions) -> StudyResult:
    """Run every point x seed of ``study``, write its CSV files and figures; returns what was written."""
    begin = time.perf_counter()
    task_cls = registry.task(study.task)
    estimators, estimator_options, seeds, selections, fixed = _resolved(study, options, registry)
    for name, values in estimator_options.items():
        configuration.build(registry.estimator(name).Config, values, name)
    variants = study.variants(estimators)
    settings = "".join(f" ({name}: {len(v)} settings)" for name, v in variants.items())
    points = [{**point, **fixed} for point in study.points()]
    tasks = []
    for point in points:
        try:
            tasks.append(task_cls(configuration.build(task_cls.Config, point, study.task)))
        except UsageError as error:
            raise UsageError(f"{study.path}: {error}") from None
    check_columns(study, task_cls)
    cache = Cache(options.cache_dir)
    records_dir = cache.root / "study-records" / study.name
    total = len(points) * len(seeds)
    trained = None
    device = resolve_device(options.device)
    if task_cls.overrides("train_many"):
        log.info("study %s: training the optima of %d runs (cached ones are reused)", study.name, total)
        pairs = [(task, seed) for task in tasks for seed in seeds]
        threads = torch.get_num_threads()
        wanted = options.threads or study.run.get("threads") or (task_cls.cpu_threads if device == "cpu" else None)
        if wanted:
            torch.set_num_threads(wanted)
        try:
            trained = task_cls.train_many(
                [t for t, _ in pairs], [s for _, s in pairs], BuildContext(device, 0, cache, options.progress)
            )
        finally:
            torch.set_num_threads(threads)
        if trained is not None:
            log.info("study %s: %d optima trained, %d cached", study.name, trained, total - trained)
    code = code_digest(registry, estimators, study.task)
    runs = list(itertools.product(enumerate(points), seeds))
    configs, keys, paths = [], [], []
    for (_, point), seed in runs:
        config = RunConfig(
            task=study.task,
            estimators=estimators,
            task_options=point,
            estimator_options=estimator_options,
            seed=seed,
            device=options.device,
            selections=selections,
            cache_dir=cache.root,
            results_dir=records_dir,
            progress=options.progress,
            gt_chunk_size=study.run.get("gt_chunk_size"),
            gt_seeds=study.run.get("gt_seeds", 1),
            truths=list(study.run.get("truths", ["loo"])),
            lds_subsets=study.run.get("lds_subsets", 100),
            lds_fraction=float(study.run.get("lds_fraction", 0.5)),
            lds_test_points=study.run.get("lds_test_points", 100),
            pbrf_damping=study.run.get("pbrf_damping"),
            threads=options.threads or study.run.get("threads"),
            plugins=list(options.plugins),
        )
        key = run_key(config, code, variants)
        configs.append(config)
        keys.append(key)
        paths.append(cache.root / "study-runs" / f"{digest(key)}.json")

    def describe(i: int) -> str:
        (_, point), seed = runs[i]
        swept = "".join(f"{k}={point[k]}, " for k in study.sweep)
        return f"study {study.name}: run {i + 1}/{total}: {swept}seed {seed}{settings}"

    def missing(i: int) -> bool:
        return cache.read_json(paths[i], keys[i]) is None

    def execute(chunk: list[int]) -> int:
        for i in chunk:
            log.info("%s", describe(i))
            started = time.perf_counter()
            written = StudyRun(configs[i], registry, pm, variants).execute()
            cache.write_json(paths[i], keys[i], {"records": written})
            gt = written[0]["ground_truth"] if written else {}
            log.info(
                "study %s: run %d/%d done in %.1f s (ground truth: %s computed, %s cached)",
                study.name,
                i + 1,
                total,
                time.perf_counter() - started,
                gt.get("computed"),
                gt.get("cached"),
            )
        return len(chunk)

    for i in range(total):
        if not missing(i):
            log.info("study %s: run %d/%d: its records are cached (same config, same code)", study.name, i + 1, total)
    # Runs are claimed one at a time with a file lock, as leave-one-out entries are: processes sharing the cache split
    # the study's runs between them instead of computing the same run (its estimators and ground truth) twice.
    (cache.root / "study-runs").mkdir(parents=True, exist_ok=True)
    compute_claimed(
        range(total), lambda i: FileLock(paths[i].parent / f".{paths[i].stem}.lock"), missing, execute, lambda n: 1
    )
    rows: list[dict[str, Any]] = []
    point_rows: list[dict[str, Any]] = []
    for i, ((index, _), _) in enumerate(runs):
        stored = cache.read_json(paths[i], keys[i])
        if stored is None:
            raise RuntimeError(f"{describe(i)}: its records are missing after running it ({paths[i]})")
        for record in stored["records"]:
            rows.append(record_row(record, study.name, index, study.estimator_sweep))
            if study.needs_points:
                point_rows.extend(record_points(record, study.name, index, list(study.sweep), study.estimator_sweep))
    options.output_dir.mkdir(parents=True, exist_ok=True)
    files = [write_csv(options.output_dir / f"{study.name}.csv", rows)]
    if study.needs_points:
        files.append(write_csv(options.output_dir / f"{study.name}-points.csv", point_rows))
    files += figures.plot_study(study, options.output_dir)
    return StudyResult(rows, point_rows, files, time.perf_counter() - begin, trained)


def _default_output_dir() -> Path:
    return results_home() / "studies"
