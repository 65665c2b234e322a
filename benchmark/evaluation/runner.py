"""One ``bench run``: build the task's problem, run every estimator, compute the shared ground truths, score, record.

Each estimator is evaluated on the trained problem (:mod:`benchmark.evaluation.estimation`: timed, its outputs
checked; a failing estimator becomes a failed record with its reason, one that does not apply to the problem a
skipped one, and the run goes on). Then each ground truth the run asks for (``truths``):

- ``loo``: each selection picks the training points it scores (:mod:`benchmark.evaluation.selections`); the
  leave-one-out ground truth is computed once for the union of those points, from the shared cache
  (:mod:`benchmark.groundtruth.engine`); every estimator and selection becomes one record;
- ``lds``: every estimator scores a sample of test points in batched calls, the subset models trained from scratch
  come from the shared cache (:mod:`benchmark.groundtruth.lds`), and every estimator becomes one record of selection
  ``lds`` whose correlations are the linear datamodeling score;
- ``pbrf``: as ``loo``, on the same selections, against the proximal Bregman response of each selected point
  (:mod:`benchmark.groundtruth.pbrf`): what a damped influence function approximates, rather than re-training;
- ``loo-scratch``: as ``loo``, with every model trained from scratch (:mod:`benchmark.groundtruth.scratch`);
- ``prox``: as ``pbrf``, with the losses themselves in place of their Bregman divergences (converged proximal
  leave-one-out, :class:`~benchmark.groundtruth.pbrf.ProximalGroundTruth`).

Records (:mod:`benchmark.evaluation.recording`) are written under the results directory and handed to the reporting
hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import torch

from benchmark.common import config as configuration
from benchmark.common import provenance
from benchmark.common.cache import Cache
from benchmark.common.errors import (
    PLUGIN_FAULTS,
    BenchError,
    Interrupted,
    PluginError,
    PluginHookError,
    UnknownNameError,
    UsageError,
    describe,
)
from benchmark.common.paths import RESULTS_ENV, writable_directory
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry, call_each
from benchmark.contracts.run_config import DEVICES, TRUTHS, RunConfig
from benchmark.contracts.task import BuildContext, Protocol, Task
from benchmark.evaluation import recording
from benchmark.evaluation.estimation import (
    Evaluation,
    evaluate_estimator,
    ihvp_residuals,
    influence_rows,
    no_ihvp_reason,
    parameter_change,
    resolve_hyperparameters,
)
from benchmark.evaluation.selections import parse_test_point, select, select_test_point, selection_description
from benchmark.groundtruth.engine import GroundTruth
from benchmark.groundtruth.executors import EXECUTORS, WorkerSpec, make_executor
from benchmark.groundtruth.lds import SubsetDesign, SubsetGroundTruth
from benchmark.groundtruth.pbrf import DEFAULT_DAMPING, PbrfGroundTruth, PbrfSolver, ProximalGroundTruth
from benchmark.groundtruth.scratch import ScratchGroundTruth
from benchmark.numerics.problem import Problem

log = logging.getLogger("bench")


def resolve_device(name: str) -> str:
    """``cpu`` or ``cuda`` for ``name``; :class:`UsageError` for an unknown name or a missing GPU."""
    if name not in DEVICES:
        raise UnknownNameError("device", name, DEVICES)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but torch sees no CUDA device; use --device cpu or auto")
    return name


def _merge(failures: list[PluginHookError]) -> list[PluginHookError]:
    """One failure per plugin and hook, counting its calls."""
    merged: dict[tuple[str, str], list[PluginHookError]] = {}
    for failure in failures:
        merged.setdefault((failure.plugin, failure.hook), []).append(failure)
    return [PluginHookError(plugin, hook, group[0].error, len(group)) for (plugin, hook), group in merged.items()]


class Run:
    """A ``bench run`` in progress (see the module docstring).

    ``variants`` (a study's ``estimator_sweep``, see :mod:`benchmark.studies.run`): per estimator name of
    ``config.estimators``, settings of some of its hyperparameters; the run evaluates that estimator once per setting
    (each over its ``config.estimator_options``) on the same problem and ground truth, and names each setting's
    records by its label, ``tracin[checkpoints=5]`` (:attr:`~benchmark.evaluation.estimation.Evaluation.label`), so
    that a record's estimator name stays unique in the run. Without it, one evaluation per estimator name.
    """

    def __init__(
        self,
        config: RunConfig,
        registry: Registry,
        pm: pluggy.PluginManager,
        variants: dict[str, list[dict[str, Any]]] | None = None,
    ):
        self.config, self.registry, self.pm = config, registry, pm
        self.device = resolve_device(config.device)
        task_cls = registry.task(config.task)
        task_config = configuration.build(task_cls.Config, config.task_options, config.task)
        self.task: Task = self._plugin_call(
            f"task {config.task!r}", registry.tasks[config.task].plugin, "__init__", task_cls, task_config
        )
        for name in sorted(set(config.estimator_options) - set(config.estimators)):
            if name in registry.estimators:
                raise UsageError(f"options given for estimator {name!r}, which is not in this run's --estimator list")
            raise UnknownNameError("task or estimator", name, [config.task, *registry.estimators])
        variants = variants or {}
        for name in variants:
            if name not in config.estimators:
                raise UsageError(f"settings given for estimator {name!r}, which is not in this run's --estimator list")
        protocol = self._protocol()
        self.estimators = []
        for name in config.estimators:
            cls = registry.estimator(name)
            plugin = registry.estimators[name].plugin
            for variant in variants.get(name) or [{}]:
                hyper = self._plugin_call(
                    f"estimator {name!r}",
                    plugin,
                    "protocol_options",
                    resolve_hyperparameters,
                    cls,
                    {**config.estimator_options.get(name, {}), **variant},
                    protocol,
                    name,
                )
                estimator = self._plugin_call(
                    f"estimator {name!r}", plugin, "__init__", cls, hyper, progress=config.progress
                )
                values = dataclasses.asdict(hyper)
                # the label shows the resolved values, as the record's hyperparameters hold them
                self.estimators.append(Evaluation(estimator, plugin, values, {k: values[k] for k in variant}))
        labels = [evaluation.label for evaluation in self.estimators]
        for label in labels:
            if labels.count(label) > 1:
                raise UsageError(f"estimator {label!r} is evaluated twice with the same settings")
        for selection in config.selections:
            selection_description(selection)
        parse_test_point(protocol.test_point)
        if config.executor not in EXECUTORS:
            raise UnknownNameError("executor", config.executor, EXECUTORS)
        for truth in config.truths:
            if truth not in TRUTHS:
                raise UnknownNameError("ground truth", truth, TRUTHS)
        for truth in ("lds", "loo-scratch"):
            if truth in config.truths and not self.task.overrides("initial_parameters"):
                capable = sorted(name for name in registry.tasks if registry.task(name).overrides("initial_parameters"))
                raise UsageError(
                    f"ground truth {truth!r} trains models from scratch, and task {config.task!r} states no "
                    f"initialisation for other seeds (Task.initial_parameters); tasks that do: "
                    f"{', '.join(capable) or 'none'}"
                )
        self.lds_design = SubsetDesign(config.lds_subsets, config.lds_fraction, config.seed)
        self.cache = Cache(config.cache_dir)
        if not writable_directory(config.results_dir, "results directory"):
            raise UsageError(
                f"results directory {config.results_dir} is not writable: pass --results-dir DIR or set ${RESULTS_ENV}"
            )
        self.read_only_cache = not writable_directory(self.cache.root, "cache directory")
        if self.read_only_cache:
            log.info("cache directory %s is read-only: this run can use only what it already holds", self.cache.root)
        # taken now, not when the records are written: the code that runs is the code of this moment
        self.environment = provenance.environment(self.device)
        self.written: list[Path] = []
        """The paths of the records written so far."""
        self.hook_failures: list[PluginHookError] = []
        """Reporting hooks that failed (every record is written regardless), one per plugin and hook."""

    @staticmethod
    def _plugin_call(
        what: str, plugin: str, method: str, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """``function(*args, **kwargs)`` of a task's or estimator's code outside the scored steps: its exception is
        one line naming it, its plugin and the method (the traceback with ``-v``)."""
        try:
            return function(*args, **kwargs)
        except (Interrupted, BenchError, PermissionError):
            raise  # a refused write: one line naming the directory (see write_errors)
        except PLUGIN_FAULTS as error:
            if isinstance(error, OSError) and error.errno == errno.EROFS:
                raise
            raise PluginError(f'{what} (plugin "{plugin}") failed in {method}: {describe(error)}') from error

    def _protocol(self) -> Protocol:
        plugin = self.registry.tasks[self.config.task].plugin
        return self._plugin_call(f"task {self.config.task!r}", plugin, "protocol", self.task.protocol)

    def build_problem(self) -> tuple[Problem, Protocol, int, float]:
        """Build the task's problem at its optimum; returns it, the protocol, the test index and its loss."""
        config = self.config
        config.pluginmanager = self.pm
        self.pm.hook.bench_configure.call_historic(kwargs={"config": config})
        torch.manual_seed(config.seed)
        threads = config.threads or (self.task.cpu_threads if self.device == "cpu" else None)
        if threads:
            torch.set_num_threads(threads)
        log.info("building task %s (seed %d, %s)", config.task, config.seed, self.device)
        context = BuildContext(self.device, config.seed, self.cache, config.progress)
        problem = self._plugin_call(
            f"task {config.task!r}", self.registry.tasks[config.task].plugin, "build", self.task.build, context
        )
        if not isinstance(problem, Problem):
            raise PluginError(
                f"task {config.task!r}: build returned a {type(problem).__name__}, expected a benchmark.Problem"
            )
        if not bool(torch.isfinite(problem.theta).all()):
            raise BenchError(f"training the {config.task} optimum diverged (non-finite parameters); lower its lr")
        protocol = self._protocol()
        test_index, test_loss = select_test_point(problem, protocol.test_point)
        return problem, protocol, test_index, test_loss

    def ground_truths(self, problem: Problem, protocol: Protocol, test_index: int) -> list[GroundTruth]:
        """One ground truth per re-training seed (``gt_seeds``); seed ``s`` shifts the minibatch seed by ``s``."""
        return [
            GroundTruth(
                problem,
                dataclasses.replace(protocol.retrain, seed=protocol.retrain.seed + s),
                self.cache,
                self.task.problem_key(self.config.seed),
                test_index,
                self.config.gt_chunk_size,
                self.config.progress,
            )
            for s in range(self.config.gt_seeds)
        ]

    def pbrf_solver(self, protocol: Protocol) -> PbrfSolver:
        """The run's PBRF definition: its damping from ``--pbrf-damping``, else the protocol's, else the default."""
        damping = self.config.pbrf_damping or protocol.damping or DEFAULT_DAMPING
        return PbrfSolver(damping=float(damping))

    def pbrf_ground_truths(
        self, problem: Problem, protocol: Protocol, test_index: int, proximal: bool = False
    ) -> list[GroundTruth]:
        """The proximal Bregman response (or, ``proximal``, the proximal leave-one-out response): one ground truth,
        since its full-batch solve uses no seed."""
        kind = ProximalGroundTruth if proximal else PbrfGroundTruth
        return [
            kind(
                problem,
                self.pbrf_solver(protocol),
                self.cache,
                self.task.problem_key(self.config.seed),
                test_index,
                self.config.gt_chunk_size,
                self.config.progress,
            )
        ]

    def removal_ground_truths(
        self, truth: str, problem: Problem, protocol: Protocol, test_index: int
    ) -> list[GroundTruth]:
        """The ground truths of single removals that ``truth`` names (``loo``, ``loo-scratch``, ``pbrf``, ``prox``)."""
        if truth in ("pbrf", "prox"):
            return self.pbrf_ground_truths(problem, protocol, test_index, proximal=truth == "prox")
        if truth == "loo-scratch":
            return self.scratch_ground_truths(problem, test_index)
        return self.ground_truths(problem, protocol, test_index)

    def scratch_ground_truths(self, problem: Problem, test_index: int) -> list[GroundTruth]:
        """Leave-one-out from scratch, one ground truth per training seed (``gt_seeds``)."""
        return [
            ScratchGroundTruth(
                problem,
                self.cache,
                self.task.problem_key(self.config.seed),
                test_index,
                train_seed,
                self.config.gt_chunk_size,
                self.config.progress,
            )
            for train_seed in range(self.config.gt_seeds)
        ]

    def subset_ground_truths(self, problem: Problem) -> list[SubsetGroundTruth]:
        """The subset models of the linear datamodeling score, one set per training seed (``gt_seeds``)."""
        return [
            SubsetGroundTruth(
                problem,
                self.lds_design,
                self.cache,
                self.task.problem_key(self.config.seed),
                train_seed,
                self.config.gt_chunk_size,
                self.config.progress,
            )
            for train_seed in range(self.config.gt_seeds)
        ]

    def executor(self) -> Callable[[Any, list[int]], int] | None:
        """The configured executor (``None``: in this process), for both ground truths."""
        config = self.config

        def spec_for(ground_truth: GroundTruth | SubsetGroundTruth) -> WorkerSpec:
            common: dict[str, Any] = {
                "plugins": list(config.plugins),
                "task": config.task,
                "task_options": dict(config.task_options),
                "seed": config.seed,
                "device": self.device,
                "cache_dir": str(self.cache.root),
                "chunk_size": config.gt_chunk_size,
                "threads": config.threads,
            }
            if isinstance(ground_truth, SubsetGroundTruth):
                design = dataclasses.asdict(ground_truth.design)
                return WorkerSpec(**common, truth="lds", lds={"design": design, "train_seed": ground_truth.train_seed})
            if isinstance(ground_truth, ScratchGroundTruth):
                seed = ground_truth.train_seed
                return WorkerSpec(**common, truth="loo-scratch", test_index=ground_truth.test_index, train_seed=seed)
            if isinstance(ground_truth, PbrfGroundTruth):
                solver = dataclasses.asdict(ground_truth.solver)
                return WorkerSpec(**common, truth=ground_truth.kind, test_index=ground_truth.test_index, pbrf=solver)
            return WorkerSpec(
                **common, test_index=ground_truth.test_index, recipe=dataclasses.asdict(ground_truth.recipe)
            )

        return make_executor(config.executor, spec_for, config.workers, config.ray_address)

    @contextlib.contextmanager
    def write_errors(self) -> Iterator[None]:
        """Turn a refused write under the cache or results directory into one line naming the directory."""
        try:
            yield
        except OSError as error:
            refused = isinstance(error, PermissionError) or error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
            if not refused or error.filename is None:
                raise
            path, reason = Path(os.fsdecode(error.filename)).expanduser(), f"{error.strerror}: {error.filename}"
            root = self.cache.root
            if path.is_relative_to(root):
                state = "read-only" if self.read_only_cache else "not writable"
                raise BenchError(
                    f"cache directory {root} is {state} ({reason}) and lacks an entry this run needs: "
                    "make it writable or pass --cache-dir DIR"
                ) from error
            if path.is_relative_to(self.config.results_dir):
                raise BenchError(f"results directory {self.config.results_dir} is not writable ({reason})") from error
            raise BenchError(f"cannot write {error.filename}: {error.strerror}") from error

    def execute(self) -> list[dict[str, Any]]:
        """Run everything; returns the records written."""
        with self.write_errors():
            return self._execute()

    def _execute(self) -> list[dict[str, Any]]:
        config = self.config
        problem, protocol, test_index, test_loss = self.build_problem()
        test_gradient = problem.test_gradients([test_index])
        problem.warm_up()
        for evaluation in self.estimators:
            evaluate_estimator(evaluation, problem, test_index, test_gradient)
        dense = ihvp_residuals(self.estimators, problem, test_gradient)
        diagnostics = (
            recording.problem_diagnostics(problem, dense, self.task.eigenvalue_iterations),
            self.task.diagnostics(problem),
        )
        base = {
            "schema": records.SCHEMA_VERSION,
            "run_id": records.new_run_id(),
            "date": records.now(),
            **self.environment,
            "task": {"name": self.task.name, "version": self.task.version, "config": self.task.describe()},
            "seed": config.seed,
            "command": config.command,
            "threads": torch.get_num_threads(),
            "test_point": {"rule": protocol.test_point, "index": test_index, "loss": test_loss},
        }
        out: list[dict[str, Any]] = []
        hook_failures: list[PluginHookError] = []
        for truth in config.truths:
            if truth == "lds":
                made = self._lds_records(problem, base, diagnostics)
            else:
                made = self._loo_records(problem, protocol, test_index, base, diagnostics, truth)
            for record in made:
                self.written.append(records.write(record, config.results_dir))
                hook_failures += call_each(self.pm.hook.bench_report_result, record=record)
            out += made
        hook_failures += call_each(self.pm.hook.bench_run_finished, records=out)
        self.hook_failures = _merge(hook_failures)
        return out

    def _loo_records(
        self,
        problem: Problem,
        protocol: Protocol,
        test_index: int,
        base: dict[str, Any],
        diagnostics: tuple[dict[str, Any], dict[str, Any]],
        truth: str = "loo",
    ) -> list[dict[str, Any]]:
        """The records of a ground truth of single removals (``loo``, ``pbrf``, ``prox`` or ``loo-scratch``): each
        estimator on each selection of the run's test point."""
        config = self.config
        k = min(protocol.eval_size, problem.n_train)
        random_set = torch.randperm(problem.n_train, generator=torch.Generator().manual_seed(config.seed))[:k].tolist()
        chosen: dict[tuple[str, str], list[int]] = {}
        for evaluation in self.estimators:
            if evaluation.failure is None and evaluation.scores is not None:
                for selection in config.selections:
                    chosen[evaluation.label, selection] = select(selection, evaluation.scores, k, random_set)
        for evaluation in self.estimators:
            if evaluation.failure is not None or evaluation.param_failure is not None or evaluation.param_norms:
                continue  # failed, or its parameter changes were taken for the run's other ground truth
            if evaluation.estimator.no_ihvp is not None:
                evaluation.param_failure = no_ihvp_reason(evaluation.estimator)
            elif self.task.parameter_change:
                parameter_change(evaluation, chosen, problem)
            else:
                evaluation.param_failure = f"not computed: task {self.task.name!r} turns the diagnostic off (cost)"

        ground_truths = self.removal_ground_truths(truth, problem, protocol, test_index)
        needed = sorted({i for indices in chosen.values() for i in indices})
        log.info("ground truth: %d %s models needed, %d seed(s)", len(needed), truth, len(ground_truths))
        executor = self.executor()
        effects = [ground_truth.effects(needed, executor) if needed else {} for ground_truth in ground_truths]
        if isinstance(ground_truths[0], PbrfGroundTruth):
            summary = recording.pbrf_summary(ground_truths[0], effects[0], needed, config.executor)
        else:
            summary = recording.ground_truth_summary(ground_truths, effects, protocol, needed, config.executor)
        common = {**base, "ground_truth": summary}
        return [
            recording.estimator_record(
                common,
                evaluation,
                selection,
                chosen.get((evaluation.label, selection)),
                effects,
                k,
                *diagnostics,
                self.reference(evaluation, selection),
            )
            for evaluation in self.estimators
            for selection in config.selections
        ]

    def reference(self, evaluation: Evaluation, selection: str) -> dict[str, Any] | None:
        """The published figure for ``evaluation``'s estimator on ``selection``
        (:meth:`benchmark.Task.paper_reference`): one stated for particular hyperparameters (under ``when``, e.g.
        ``{"models": 50}`` for TRAK-50) applies only to an evaluation with those values, and the record holds it
        without ``when``."""
        found = self.task.paper_reference(evaluation.estimator.name, selection)
        if not found:
            return found
        when = found.get("when") or {}
        if any(evaluation.hyperparameters.get(field) != value for field, value in when.items()):
            return None
        return {k: v for k, v in found.items() if k != "when"}

    def lds_test_points(self, problem: Problem) -> list[int]:
        """The test points the linear datamodeling score averages over: ``lds_test_points`` of them drawn with the
        run's seed (all, where the test set is smaller), in increasing order."""
        n_test = int(problem.x_test.shape[0])
        order = torch.randperm(n_test, generator=torch.Generator().manual_seed(self.config.seed))
        return sorted(order[: min(self.config.lds_test_points, n_test)].tolist())

    def _lds_records(
        self, problem: Problem, base: dict[str, Any], diagnostics: tuple[dict[str, Any], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The linear-datamodeling records: each estimator scored on many test points against the subset models."""
        test_indices = self.lds_test_points(problem)
        scores: dict[str, Any] = {}
        for evaluation in self.estimators:
            if evaluation.failure is None:
                scores[evaluation.label] = influence_rows(evaluation, problem, test_indices)
        ground_truths = self.subset_ground_truths(problem)
        log.info(
            "ground truth: %d subset models per seed, %d seed(s), %d test points",
            self.lds_design.subsets,
            len(ground_truths),
            len(test_indices),
        )
        executor = self.executor()
        measured = torch.stack([truth.test_losses(test_indices, executor) for truth in ground_truths]).numpy()
        common = {**base, "ground_truth": recording.lds_summary(ground_truths, test_indices, self.config.executor)}
        masks = ground_truths[0].masks.numpy()
        return [
            recording.lds_record(
                common,
                evaluation,
                scores.get(evaluation.label, (None, None)),
                masks,
                measured,
                test_indices,
                *diagnostics,
                self.reference(evaluation, "lds"),
            )
            for evaluation in self.estimators
        ]
