"""One ``bench run``: build the task's problem, run every estimator, compute the shared ground truth, score, record.

The influence of every training point on the test point is computed by each estimator (timed: preparation and
query separately); the leave-one-out ground truth is computed once for the union of the points any selection needs,
from the shared cache; a failing estimator becomes a failed record with its reason, an estimator that does not apply
to the problem (:class:`~benchmark.common.errors.EstimatorSkipped`) a skipped one, and the run goes on.

Estimator settings: a task's :class:`~benchmark.contracts.task.Protocol` may state a ``damping``; every estimator that
declares a damping (:attr:`Estimator.damping_field`) gets it unless the run sets that field (``--set``, a YAML section),
and the records hold the resolved hyperparameters (see :func:`resolve_hyperparameters`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch

from benchmark.common import config as configuration
from benchmark.common import provenance
from benchmark.common.cache import Cache
from benchmark.common.errors import (
    PLUGIN_FAULTS,
    BenchError,
    EstimatorFailed,
    EstimatorSkipped,
    Interrupted,
    PluginError,
    PluginHookError,
    UnknownNameError,
    UsageError,
    describe,
)
from benchmark.contracts import records
from benchmark.contracts.estimator import Estimator
from benchmark.contracts.plugins import Registry, call_each
from benchmark.contracts.run_config import DEVICES, RunConfig, default_results_dir
from benchmark.contracts.task import BuildContext, Protocol, Task
from benchmark.evaluation.scoring import bootstrap_interval, correlations, repeat_ceiling
from benchmark.groundtruth.engine import GroundTruth, LooEffect
from benchmark.groundtruth.executors import EXECUTORS, WorkerSpec, make_executor
from benchmark.numerics.curvature import DenseHessian, top_eigenvalue
from benchmark.numerics.problem import Problem

log = logging.getLogger("bench")

SELECTIONS = {
    "top": "top-k by |estimated influence|, each estimator its own (the paper's protocol)",
    "random": "k training points drawn uniformly with the run's seed, the same for every estimator",
    "pNN": "the k training points whose estimated influence is nearest its NN-th percentile, each estimator its own "
    "(the paper's Fig. 3b uses p30)",
}
CONVERGENCE_TOL = 1e-4
"""An optimum whose objective gradient norm exceeds this is reported as not converged."""
DENSE_LIMIT = 1_000
"""Problems with at most this many parameters get a dense float64 Hessian as the iHVP reference; larger ones get it
only when the ``exact`` estimator of the same run computed it anyway (it is shared through the problem)."""


PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "leaderboards"
"""The committed leaderboards of a source checkout (``--publish``): ``<task>.md``, ``results/``, ``studies/``, the
claims table ``README.md``."""


def published_dir() -> Path:
    """:data:`PUBLISHED_DIR`; :class:`UsageError` where the package runs from no source checkout."""
    if not PUBLISHED_DIR.is_dir():
        raise UsageError(
            f"--publish writes a source checkout's committed leaderboards, and there are none at "
            f"{PUBLISHED_DIR}: name the directories instead"
        )
    return PUBLISHED_DIR


def results_home() -> Path:
    """Where a user's leaderboards, studies and report go by default: the parent of :func:`default_results_dir`."""
    return default_results_dir().parent


def writable_directory(path: Path, what: str) -> bool:
    """Whether ``path`` (or, where it does not exist yet, its nearest existing ancestor) is a writable directory.

    Raises:
        UsageError: ``path`` or an ancestor is not a directory (a file, say).
    """
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        below = "" if probe == path else f" ({probe} is a file)"
        raise UsageError(f"{what} {path} is not a directory{below}")
    return os.access(probe, os.W_OK | os.X_OK)


def resolve_hyperparameters(cls: type[Estimator], options: dict[str, Any] | None, protocol: Protocol, name: str) -> Any:
    """The config of estimator ``cls`` for a run: the protocol's settings for it (:meth:`Estimator.protocol_options`,
    e.g. the protocol damping), overridden field by field by the run's own ``options`` (``--set``, YAML), over the
    Config's defaults. A bad value is a one-line :class:`UsageError` naming ``name``."""
    from_protocol = cls.protocol_options(protocol)
    if not isinstance(from_protocol, dict):
        raise PluginError(
            f"estimator {name!r}: protocol_options returned a {type(from_protocol).__name__}, expected a "
            "dict of its Config fields"
        )
    return configuration.build(cls.Config, {**from_protocol, **(options or {})}, name)


def selection_description(selection: str) -> str:
    """What ``selection`` scores (a key of :data:`SELECTIONS`, or ``pNN`` with ``NN`` in 0..100); a one-line error for
    anything else."""
    if selection in SELECTIONS and selection != "pNN":
        return SELECTIONS[selection]
    if selection.startswith("p") and selection[1:].isdigit() and 0 <= int(selection[1:]) <= 100:
        return SELECTIONS["pNN"].replace("NN-th", f"{int(selection[1:])}th")
    raise UnknownNameError("selection", selection, ["top", "random", "p0..p100"])


def select(selection: str, scores: np.ndarray, k: int, random_set: list[int]) -> list[int]:
    """The training indices ``selection`` scores, given one estimator's influence ``scores``
    (see :data:`SELECTIONS`)."""
    if selection == "top":
        return np.argsort(-np.abs(scores), kind="stable")[:k].tolist()
    if selection == "random":
        return random_set
    target = np.percentile(scores, int(selection[1:]))
    return np.argsort(np.abs(scores - target), kind="stable")[:k].tolist()


def resolve_device(name: str) -> str:
    """``cpu`` or ``cuda`` for ``name``; :class:`UsageError` for an unknown name or a missing GPU."""
    if name not in DEVICES:
        raise UnknownNameError("device", name, DEVICES)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but torch sees no CUDA device; use --device cpu or auto")
    return name


def parse_test_point(rule: str | int) -> tuple[str, float]:
    """Check a test-point rule: ``("max-loss", 0)``, ``("percentile", q)`` with ``q`` in [0, 1], or ``("index", i)``."""
    if isinstance(rule, int) and not isinstance(rule, bool):
        if rule < 0:
            raise UsageError(f"bad test point {rule}: a test index must be >= 0")
        return "index", rule
    if rule == "max-loss":
        return "max-loss", 0.0
    if isinstance(rule, str) and rule.startswith("p"):
        try:
            quantile = float(rule[1:]) / 100
        except ValueError:
            quantile = -1.0
        if 0 <= quantile <= 1:
            return "percentile", quantile
    raise UsageError(f"bad test point {rule!r}: expected max-loss, p0..p100 (a loss percentile) or a test index")


def select_test_point(problem: Problem, rule: str | int) -> tuple[int, float]:
    """The test index chosen by ``rule`` (see :func:`parse_test_point`) and its loss at the optimum."""
    kind, value = parse_test_point(rule)
    losses = problem.test_losses()
    if kind == "index":
        if value >= len(losses):
            raise UsageError(f"test point {value} out of range (the test set has {len(losses)} points)")
        index = int(value)
    elif kind == "max-loss":
        index = int(losses.argmax())
    else:
        target = torch.quantile(losses, value)
        index = int((losses - target).abs().argmin())
    return index, float(losses[index])


@dataclasses.dataclass
class Evaluation:
    """What one estimator produced on the problem."""

    estimator: Estimator
    plugin: str
    hyperparameters: dict[str, Any]
    failure: str | None = None
    skipped: bool = False
    """Whether :attr:`failure` is the reason the estimator does not apply (:class:`EstimatorSkipped`), not a fault."""
    scores: np.ndarray | None = None
    param_norms: dict[int, float] = dataclasses.field(default_factory=dict)
    param_failure: str | None = None
    solution: torch.Tensor | None = None
    residual: float | None = None
    timings: dict[str, float | None] = dataclasses.field(default_factory=lambda: {"prepare_s": None, "query_s": None})
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: BaseException | None = None
    """The exception behind :attr:`failure` (an :class:`EstimatorFailed` is a refusal; anything else a fault)."""


def _failure(error: BaseException) -> str:
    if isinstance(error, EstimatorFailed):
        return error.reason
    log.debug("estimator error:\n%s", "".join(traceback.format_exception(error)))
    return describe(error)


def check_output(method: str, value: Any, shape: tuple[int, ...], dtype: torch.dtype, meaning: str) -> torch.Tensor:
    """``value`` if it is a finite ``Tensor`` of ``shape`` and ``dtype``; :class:`EstimatorFailed` naming ``method``,
    the expected and the actual type, shape or dtype otherwise (``meaning`` says what the expected shape holds)."""
    if not isinstance(value, torch.Tensor):
        raise EstimatorFailed(f"{method} returned a {type(value).__name__}, expected a torch.Tensor of shape {shape}")
    if tuple(value.shape) != shape:
        raise EstimatorFailed(f"{method} returned shape {tuple(value.shape)}, expected {shape} ({meaning})")
    if value.dtype != dtype:
        raise EstimatorFailed(f"{method} returned dtype {value.dtype}, expected {dtype} (the problem's dtype)")
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise EstimatorFailed(f"{method} returned values that are not finite ({bad} of {value.numel()})")
    return value


def _no_ihvp(estimator: Estimator) -> str:
    """Why an estimator's iHVP diagnostics read n/a (see :attr:`Estimator.no_ihvp`)."""
    return f"n/a: estimator {estimator.name!r} has no iHVP ({estimator.no_ihvp})"


def _merge(failures: list[PluginHookError]) -> list[PluginHookError]:
    """One failure per plugin and hook, counting its calls."""
    merged: dict[tuple[str, str], list[PluginHookError]] = {}
    for failure in failures:
        merged.setdefault((failure.plugin, failure.hook), []).append(failure)
    return [PluginHookError(plugin, hook, group[0].error, len(group)) for (plugin, hook), group in merged.items()]


def evaluate_estimator(evaluation: Evaluation, problem: Problem, test_index: int, test_gradient: torch.Tensor) -> None:
    """Prepare ``evaluation``'s estimator on ``problem`` and score every training point's influence on the test
    point (timed: ``timings``), keeping its test iHVP for the residual (:func:`ihvp_residuals`). Every output is
    checked (:func:`check_output`); a failure or a skip is recorded on ``evaluation`` (``failure``, ``skipped``,
    ``error``), never raised. ``bench run`` and the asv suite (``asv_bench/cases.py``) evaluate through this."""
    estimator = evaluation.estimator
    ihvp_shape = tuple(test_gradient.shape)
    influence_shape = (1, problem.n_train)
    rows = "one row per test point, one column per training point"
    try:
        start = time.perf_counter()
        estimator.prepare(problem)
        evaluation.timings["prepare_s"] = time.perf_counter() - start
        overrides_influence = type(estimator).influence is not Estimator.influence
        start = time.perf_counter()
        if overrides_influence:
            scores = estimator.influence([test_index])
        else:  # the same computation as Estimator.influence, keeping the iHVP for the residual
            evaluation.solution = check_output(
                "ihvp",
                estimator.ihvp(test_gradient),
                ihvp_shape,
                test_gradient.dtype,
                "one row per vector, one column per parameter",
            )
            scores = estimator.influence_from_solutions(evaluation.solution)
        evaluation.timings["query_s"] = time.perf_counter() - start
        evaluation.diagnostics = dict(estimator.diagnostics)
        scores = check_output("influence", scores, influence_shape, problem.dtype, rows)[0]
        evaluation.scores = scores.detach().cpu().double().numpy()
        if overrides_influence and estimator.no_ihvp is None:  # untimed: only for the residual
            evaluation.solution = check_output(
                "ihvp",
                estimator.ihvp(test_gradient),
                ihvp_shape,
                test_gradient.dtype,
                "one row per vector, one column per parameter",
            )
    except Interrupted:
        raise
    except EstimatorSkipped as skip:
        evaluation.failure, evaluation.skipped, evaluation.error = skip.reason, True, skip
        log.info("estimator %s skipped: %s", estimator.name, skip.reason)
        return
    except PLUGIN_FAULTS as error:
        evaluation.failure, evaluation.error = _failure(error), error
        log.warning("estimator %s failed: %s", estimator.name, evaluation.failure)
        return
    log.info(
        "estimator %s: prepare %.2f s, query %.2f s",
        estimator.name,
        evaluation.timings["prepare_s"],
        evaluation.timings["query_s"],
    )


def ihvp_residuals(
    evaluations: list[Evaluation],
    problem: Problem,
    test_gradient: torch.Tensor,
) -> DenseHessian | None:
    """Set each evaluation's ``residual``, ``|s - s*| / |s*|`` of its test iHVP ``s`` against the dense float64 solve
    ``s*`` at its own damping, where a dense Hessian exists (shared by ``exact``) or is affordable
    (:data:`DENSE_LIMIT`); returns the dense Hessian, or ``None``."""
    dense = DenseHessian.shared(problem)
    if dense is None and problem.n_params <= DENSE_LIMIT:
        dense = DenseHessian.of(problem)
    if dense is not None:
        for evaluation in evaluations:
            if evaluation.solution is not None:
                exact = dense.solve(test_gradient, evaluation.estimator.damping)
                error = torch.linalg.vector_norm(evaluation.solution.to(exact) - exact)
                evaluation.residual = float(error / torch.linalg.vector_norm(exact))
    return dense


def score_selection(
    scores: np.ndarray,
    indices: list[int],
    effects: list[dict[int, LooEffect]],
) -> tuple[list[float], np.ndarray, dict[str, dict[str, Any]]]:
    """How well an estimator's ``scores`` predict re-training on the training points ``indices`` (a selection):
    the estimated loss changes, the re-trained ones per ground-truth seed (``[seeds, len(indices)]``), and the
    Pearson and Spearman correlations of the first with the mean of the second
    (:func:`benchmark.evaluation.scoring.correlations`).
    """
    estimated = [float(scores[i]) for i in indices]
    per_seed = np.array([[seed_effects[i].loss_change for i in indices] for seed_effects in effects])
    return estimated, per_seed, correlations(estimated, per_seed.mean(axis=0).tolist())


class Run:
    """A ``bench run`` in progress (see the module docstring)."""

    def __init__(self, config: RunConfig, registry: Registry, pm: pluggy.PluginManager):
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
        protocol = self._protocol()
        self.estimators = []
        for name in config.estimators:
            cls = registry.estimator(name)
            plugin = registry.estimators[name].plugin
            hyper = self._plugin_call(
                f"estimator {name!r}",
                plugin,
                "protocol_options",
                resolve_hyperparameters,
                cls,
                config.estimator_options.get(name),
                protocol,
                name,
            )
            estimator = self._plugin_call(
                f"estimator {name!r}", plugin, "__init__", cls, hyper, progress=config.progress
            )
            self.estimators.append(Evaluation(estimator, plugin, dataclasses.asdict(hyper)))
        for selection in config.selections:
            selection_description(selection)
        parse_test_point(protocol.test_point)
        if config.executor not in EXECUTORS:
            raise UnknownNameError("executor", config.executor, EXECUTORS)
        self.cache = Cache(config.cache_dir)
        if not writable_directory(config.results_dir, "results directory"):
            raise UsageError(
                f"results directory {config.results_dir} is not writable: pass --results-dir DIR or set "
                f"${records.RESULTS_ENV}"
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

    def executor(self) -> Callable[[GroundTruth, list[int]], int] | None:
        """The configured executor (``None``: in this process)."""
        config = self.config

        def spec_for(ground_truth: GroundTruth) -> WorkerSpec:
            return WorkerSpec(
                plugins=list(config.plugins),
                task=config.task,
                task_options=dict(config.task_options),
                seed=config.seed,
                device=self.device,
                cache_dir=str(self.cache.root),
                test_index=ground_truth.test_index,
                recipe=dataclasses.asdict(ground_truth.recipe),
                chunk_size=config.gt_chunk_size,
                threads=config.threads,
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
        k = min(protocol.eval_size, problem.n_train)
        test_gradient = problem.test_gradients([test_index])
        problem.warm_up()
        for evaluation in self.estimators:
            evaluate_estimator(evaluation, problem, test_index, test_gradient)
        dense = ihvp_residuals(self.estimators, problem, test_gradient)
        problem_diagnostics = self._problem_diagnostics(problem, dense)
        task_diagnostics = self.task.diagnostics(problem)

        random_set = torch.randperm(problem.n_train, generator=torch.Generator().manual_seed(config.seed))[:k].tolist()
        chosen: dict[tuple[str, str], list[int]] = {}
        for evaluation in self.estimators:
            if evaluation.failure is None:
                for selection in config.selections:
                    chosen[evaluation.estimator.name, selection] = select(selection, evaluation.scores, k, random_set)
        for evaluation in self.estimators:
            if evaluation.failure is not None:
                continue
            if evaluation.estimator.no_ihvp is not None:
                evaluation.param_failure = _no_ihvp(evaluation.estimator)
            elif self.task.parameter_change:
                self._parameter_change(evaluation, chosen, problem)
            else:
                evaluation.param_failure = f"not computed: task {self.task.name!r} turns the diagnostic off (cost)"

        ground_truths = self.ground_truths(problem, protocol, test_index)
        needed = sorted({i for indices in chosen.values() for i in indices})
        log.info("ground truth: %d leave-one-out models needed, %d seed(s)", len(needed), len(ground_truths))
        executor = self.executor()
        effects = [ground_truth.effects(needed, executor) if needed else {} for ground_truth in ground_truths]
        gt_summary = self._ground_truth_summary(ground_truths, effects, protocol, needed)

        common = {
            "schema": records.SCHEMA_VERSION,
            "run_id": records.new_run_id(),
            "date": records.now(),
            **self.environment,
            "task": {"name": self.task.name, "version": self.task.version, "config": self.task.describe()},
            "seed": config.seed,
            "command": config.command,
            "threads": torch.get_num_threads(),
            "test_point": {"rule": protocol.test_point, "index": test_index, "loss": test_loss},
            "ground_truth": gt_summary,
        }
        out = []
        hook_failures: list[PluginHookError] = []
        for evaluation in self.estimators:
            for selection in config.selections:
                record = self._record(
                    common,
                    evaluation,
                    selection,
                    chosen.get((evaluation.estimator.name, selection)),
                    effects,
                    k,
                    problem_diagnostics,
                    task_diagnostics,
                )
                self.written.append(records.write(record, config.results_dir))
                hook_failures += call_each(self.pm.hook.bench_report_result, record=record)
                out.append(record)
        hook_failures += call_each(self.pm.hook.bench_run_finished, records=out)
        self.hook_failures = _merge(hook_failures)
        return out

    def _ground_truth_summary(
        self,
        ground_truths: list[GroundTruth],
        effects: list[dict[int, LooEffect]],
        protocol: Protocol,
        needed: list[int],
    ) -> dict[str, Any]:
        references = [ground_truth.reference() for ground_truth in ground_truths]
        drifts = [reference.drift for reference in references]
        magnitudes = [abs(e.loss_change) for per_seed in effects for e in per_seed.values()]
        median_effect = float(np.median(magnitudes)) if magnitudes else None
        return {
            "protocol": "leave-one-out re-training from the optimum",
            "recipe": dataclasses.asdict(protocol.retrain),
            "seeds": len(ground_truths),
            "reference": "the optimum re-trained with the same recipe and minibatches on the full data",
            "reference_test_loss": references[0].test_loss,
            "reference_drift": float(np.mean(drifts)),
            "reference_drift_per_seed": drifts,
            "median_abs_effect": median_effect,
            "drift_to_effect": abs(float(np.mean(drifts))) / median_effect if median_effect else None,
            "points": len(needed),
            "cached": sum(g.stats.cached for g in ground_truths),
            "computed": sum(g.stats.computed for g in ground_truths),
            "corrupt_recomputed": sum(g.stats.corrupt for g in ground_truths),
            "seconds": sum(g.stats.seconds for g in ground_truths),
            "chunk_size": ground_truths[0].stats.chunk_size,
            "executor": self.config.executor,
            "cache_key": ground_truths[0].key,
        }

    # -- steps -------------------------------------------------------------------------------------------------------
    def _problem_diagnostics(self, problem: Problem, dense: DenseHessian | None) -> dict[str, Any]:
        gradient_norm = problem.gradient_norm()
        diagnostics: dict[str, Any] = {
            "n_train": problem.n_train,
            "n_params": problem.n_params,
            "weight_decay": problem.weight_decay,
            "gradient_norm": gradient_norm,
            "convergence_tol": CONVERGENCE_TOL,
            "converged": gradient_norm <= CONVERGENCE_TOL,
        }
        if dense is not None:
            diagnostics["top_eigenvalue"] = float(dense.eigenvalues[-1])
            diagnostics["bottom_eigenvalue"] = float(dense.eigenvalues[0])
        else:
            diagnostics["top_eigenvalue"] = top_eigenvalue(problem, self.task.eigenvalue_iterations)
        if not diagnostics["converged"]:
            log.warning("the optimum is not converged: gradient norm %.3g > %.0e", gradient_norm, CONVERGENCE_TOL)
        return diagnostics

    def _parameter_change(
        self, evaluation: Evaluation, chosen: dict[tuple[str, str], list[int]], problem: Problem
    ) -> None:
        indices = sorted({i for (name, _), idx in chosen.items() if name == evaluation.estimator.name for i in idx})
        log.info(
            "estimator %s: parameter change of %d training points (the ‖Δθ‖ diagnostic)",
            evaluation.estimator.name,
            len(indices),
        )
        try:
            changes = check_output(
                "parameter_change",
                evaluation.estimator.parameter_change(indices),
                (len(indices), problem.n_params),
                problem.dtype,
                "one row per training point, one column per parameter",
            )
            norms = torch.linalg.vector_norm(changes, dim=1).tolist()
            evaluation.param_norms = dict(zip(indices, norms))
        except Interrupted:
            raise
        except PLUGIN_FAULTS as error:
            evaluation.param_failure = _failure(error)

    def _record(
        self,
        common: dict[str, Any],
        evaluation: Evaluation,
        selection: str,
        indices: list[int] | None,
        effects: list[dict[int, LooEffect]],
        k: int,
        problem_diagnostics: dict[str, Any],
        task_diagnostics: dict[str, Any],
    ) -> dict[str, Any]:
        name = evaluation.estimator.name
        record = {
            **common,
            "estimator": {"name": name, "plugin": evaluation.plugin, "hyperparameters": evaluation.hyperparameters},
            "selection": {"kind": selection, "size": k, "description": selection_description(selection)},
            "status": ("skipped" if evaluation.skipped else "failed") if evaluation.failure else "ok",
            "failure": evaluation.failure,
            "timings": evaluation.timings,
            "diagnostics": {
                "problem": problem_diagnostics,
                "estimator": evaluation.diagnostics,
                "task": task_diagnostics,
            },
            "paper": self.task.paper_reference(name, selection),
            "metrics": None,
            "points": None,
        }
        if evaluation.failure is not None or indices is None:
            return record
        estimated, per_seed, metrics = score_selection(evaluation.scores, indices, effects)
        norms_per_seed = np.array([[seed_effects[i].param_change_norm for i in indices] for seed_effects in effects])
        retrained = per_seed.mean(axis=0).tolist()
        for method, entry in metrics.items():
            entry["interval"] = bootstrap_interval(method, estimated, per_seed) if entry["value"] is not None else None
        points: dict[str, Any] = {
            "train_indices": indices,
            "estimated": estimated,
            "retrained": retrained,
            "retrained_per_seed": per_seed.tolist(),
            "retrained_param_norm": norms_per_seed.mean(axis=0).tolist(),
        }
        if evaluation.param_failure is None:
            points["estimated_param_norm"] = [evaluation.param_norms[i] for i in indices]
            norm_metrics = correlations(points["estimated_param_norm"], points["retrained_param_norm"])
        else:
            reason = evaluation.param_failure
            plain = reason.startswith(("not computed", "n/a"))
            undefined = {"value": None, "undefined": reason if plain else f"parameter change failed: {reason}"}
            norm_metrics = {"pearson": undefined, "spearman": undefined}
        record["metrics"] = {
            **metrics,
            "ceiling": {method: repeat_ceiling(method, per_seed) for method in metrics},
            "param_norm_pearson": norm_metrics["pearson"],
            "param_norm_spearman": norm_metrics["spearman"],
            "ihvp_relative_residual": evaluation.residual,
        }
        if evaluation.estimator.no_ihvp is not None:
            record["metrics"]["ihvp_residual_undefined"] = _no_ihvp(evaluation.estimator)
        record["points"] = points
        return record
