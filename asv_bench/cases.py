"""What the timing suite runs: Table 2's cases, the sizes, the registered estimators, and the one-off artefacts.

Parameters never change with the environment: every case, size and registered estimator is always a parameter.
Environment variables only decide which of them *run*; the others are skipped (``NotImplementedError`` in ``setup``,
shown by asv as n/a):

``BENCH_ASV_LARGE=1``
    also run the large sizes: the sizes ``cpu`` and ``paper``, and the architectures above LeNet at size ``small``.
``BENCH_ASV_CASES``
    only these cases, comma-separated (default: all), e.g. ``BENCH_ASV_CASES=mnist/resnet50`` on a GPU.
``BENCH_DATA_DIR``
    where the real MNIST and CIFAR-10 files are (sizes ``cpu`` and ``paper`` need them; ``small`` uses generated
    images and needs no data).
``BENCH_ASV_PLUGINS``
    extra plugins, comma-separated, as ``bench -p`` takes them (a module path, ``no:NAME``), or the path of a
    ``.py`` file: e.g. ``BENCH_ASV_PLUGINS=$PWD/examples/diagonal_estimator.py`` times the example estimator too.
    Plugins installed in the ``bench`` entry-point group are found without it.
``BENCH_ASV_DEVICE``
    ``cpu``, ``cuda`` or ``auto`` (default): where problems live and estimators run.
``BENCH_ASV_TIMER``
    ``wall`` (default: the wall clock, as the paper's Table 2) or ``process`` (the CPU time of the benchmark
    process: on a machine shared with other work, with one thread, it is what the wall clock would say on an idle
    machine; CPU only, since it misses GPU work).
``BENCH_ASV_THREADS``
    torch's CPU threads (default: the task's choice, as in ``bench run``).
``BENCH_ASV_CACHE_DIR``
    the harness cache holding the trained optima and the leave-one-out ground truth (default: a fresh one in asv's
    ``setup_cache`` directory, so every commit trains its own). Point it at a ``bench`` cache to reuse optima
    trained by ``bench run``/``bench gt`` (cache keys include the task version and the training recipe).

Sizes: ``small`` is Iris (its only size: the paper's full data set) and the ``smoke`` preset of ``mnist``/``cifar``
(generated images, 128 training points); ``cpu`` and ``paper`` are those presets of ``tasks/vision.py`` on real data.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from benchmark.common.errors import EstimatorFailed, PluginError
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.run_config import RunConfig
from benchmark.contracts.task import Protocol
from benchmark.evaluation.estimation import evaluate_estimator, ihvp_residuals
from benchmark.evaluation.recording import score_selection
from benchmark.evaluation.runner import Run, resolve_device
from benchmark.evaluation.selections import select
from benchmark.numerics.problem import Problem
from tasks.models import MODELS

LARGE_ENV = "BENCH_ASV_LARGE"
CASES_ENV = "BENCH_ASV_CASES"
DATA_ENV = "BENCH_DATA_DIR"
PLUGINS_ENV = "BENCH_ASV_PLUGINS"
DEVICE_ENV = "BENCH_ASV_DEVICE"
THREADS_ENV = "BENCH_ASV_THREADS"
TIMER_ENV = "BENCH_ASV_TIMER"
CACHE_ENV = "BENCH_ASV_CACHE_DIR"

CASES: tuple[str, ...] = ("iris", *(f"{task}/{model}" for task in ("mnist", "cifar") for model in MODELS))
"""Table 2's rows (task/architecture), plus Iris; ``cifar/small-cnn`` too, though the paper did not time it."""
SIZES: tuple[str, ...] = ("small", "cpu", "paper")
VISION_PRESETS = {"small": "smoke", "cpu": "cpu", "paper": "paper"}
"""Size -> preset of the ``mnist``/``cifar`` tasks (:data:`tasks.vision.PRESETS`)."""
SMALL_MODELS = ("small-cnn", "lenet")
"""Architectures that run at size ``small`` by default; the others are large at every size."""
SEED = 0
ARTEFACTS = "bench-asv-artefacts.json"


def split_case(case: str) -> tuple[str, str | None]:
    """``"mnist/lenet"`` -> ``("mnist", "lenet")``; ``"iris"`` -> ``("iris", None)``."""
    task, _, model = case.partition("/")
    return task, model or None


def task_options(case: str, size: str) -> dict[str, Any]:
    """The task's ``--set`` options of ``case`` at ``size``."""
    task, model = split_case(case)
    return {} if model is None else {"preset": VISION_PRESETS[size], "model": model}


def skip_reason(case: str, size: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why ``case`` does not run at ``size`` in this environment, or ``None`` if it runs."""
    environ = os.environ if environ is None else environ
    selected = [name.strip() for name in environ.get(CASES_ENV, "").split(",") if name.strip()]
    for name in selected:
        if name not in CASES:
            raise ValueError(f"{CASES_ENV}: unknown case {name!r} (choices: {', '.join(CASES)})")
    if selected and case not in selected:
        return f"not selected by {CASES_ENV}"
    _, model = split_case(case)
    if model is None:
        return None if size == "small" else "Iris has one size (the paper's full data set), run as 'small'"
    if size == "small" and model in SMALL_MODELS:
        return None
    if not environ.get(LARGE_ENV):
        return f"large size (set {LARGE_ENV}=1 to run it)"
    if size != "small" and not environ.get(DATA_ENV):
        return f"size {size!r} needs the real data set (set {DATA_ENV} to its directory)"
    return None


def plugin_args(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``-p`` arguments named by ``$BENCH_ASV_PLUGINS``; a ``.py`` file is imported here under its stem."""
    environ = os.environ if environ is None else environ
    args = []
    for item in (part.strip() for part in environ.get(PLUGINS_ENV, "").split(",")):
        if not item:
            continue
        if item.endswith(".py") or os.sep in item:
            path = Path(item).expanduser().resolve()
            if not path.is_file():
                raise PluginError(f"{PLUGINS_ENV}: no plugin file {str(path)!r}")
            name = path.stem
            module = sys.modules.get(name)
            if module is None or Path(getattr(module, "__file__", "") or "").resolve() != path:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception as error:
                    del sys.modules[name]
                    raise PluginError(f'Error importing plugin "{path}": {type(error).__name__}: {error}') from None
            item = name
        args.append(item)
    return args


@functools.cache
def _registry(args: tuple[str, ...]) -> Registry:
    return Registry(plugin_manager(args))


def registry() -> Registry:
    """Tasks and estimators of every plugin: built-ins, the ``bench`` entry points and ``$BENCH_ASV_PLUGINS``."""
    return _registry(tuple(plugin_args()))


def estimator_names() -> list[str]:
    """Every registered estimator, in the plugin manager's order (the suite's ``estimator`` parameter)."""
    return list(registry().estimators)


def device() -> str:
    """``cpu`` or ``cuda`` (``$BENCH_ASV_DEVICE``, default ``auto``)."""
    return resolve_device(os.environ.get(DEVICE_ENV) or "auto")


def threads() -> int | None:
    """Torch CPU threads from ``$BENCH_ASV_THREADS`` (``None``: the task chooses)."""
    value = os.environ.get(THREADS_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer")
    return int(value)


TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


def timer_name() -> str:
    """``wall`` or ``process`` (``$BENCH_ASV_TIMER``, default ``wall``)."""
    name = os.environ.get(TIMER_ENV) or "wall"
    if name not in TIMERS:
        raise ValueError(f"{TIMER_ENV}={name!r}: expected one of {', '.join(TIMERS)}")
    if name == "process" and device() == "cuda":
        raise ValueError(f"{TIMER_ENV}=process measures CPU time and misses GPU work: use wall on CUDA")
    return name


def timer() -> Callable[[], float]:
    """The clock of every ``time_`` benchmark (asv's ``timer`` attribute)."""
    return TIMERS[timer_name()]


def cache_dir() -> Path:
    """The harness cache of the suite (``$BENCH_ASV_CACHE_DIR``, else ``bench-cache`` in the working directory)."""
    return Path(os.environ.get(CACHE_ENV) or Path.cwd() / "bench-cache").expanduser().resolve()


def synchronize() -> None:
    """Wait for queued CUDA work, so that a timing covers it (a no-op on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def build(
    case: str, size: str, cache: Path, options: dict[str, Any] | None = None, estimators: list[str] | None = None
) -> tuple[Run, Problem, Protocol, int]:
    """The trained problem of ``case`` at ``size`` (trained into, or loaded from, ``cache``), as ``bench run`` builds
    it: returns the run, the problem, the protocol and the test point's index. The run's ``estimators`` are made as
    ``bench run`` makes them (:func:`benchmark.evaluation.estimation.resolve_hyperparameters`: the task's protocol
    damping, e.g. 0.01 on MNIST and CIFAR-10), in ``run.estimators``."""
    task, _ = split_case(case)
    config = RunConfig(
        task=task,
        estimators=list(estimators or []),
        task_options={**task_options(case, size), **(options or {})},
        seed=SEED,
        device=device(),
        selections=["top"],
        cache_dir=cache,
        results_dir=cache / "unused",
        progress=False,
        threads=threads(),
        plugins=plugin_args(),
    )
    run = Run(config, registry(), registry().pm)
    problem, protocol, test_index, _ = run.build_problem()
    return run, problem, protocol, test_index


@dataclasses.dataclass
class Outcome:
    """One estimator evaluated once on one case.

    Attributes:
        status: ``ok``; ``declined`` (it raised :class:`EstimatorFailed`: not applicable, diverged; its timings are
            skipped with the reason); or ``error`` (any other exception: its timings run and fail loudly).
        reason: why it did not succeed.
        spearman: Spearman correlation of its top-k estimated influences with leave-one-out re-training (size
            ``small`` only; ``None`` when undefined or not computed).
        spearman_undefined: why the correlation is undefined (constant values).
        residual: ``|s - s*| / |s*|`` of its test iHVP ``s`` against the dense float64 solve ``s*`` where one
            exists (as in ``bench run``).
        models_s: what the extra models its preparation used (``tracin``'s checkpoints, ``trak``'s ensemble) cost
            to produce, as ``bench run`` records it; ``None`` for an estimator that uses none. Such an estimator's
            preparation is also timed with its models taken from the cache (:func:`own_preparation`).
    """

    status: str
    reason: str | None = None
    spearman: float | None = None
    spearman_undefined: str | None = None
    residual: float | None = None
    models_s: float | None = None


def evaluate(
    case: str, size: str, cache: Path, estimators: list[str], options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train ``case`` at ``size``, evaluate every estimator once, and (at size ``small``) score it against the
    leave-one-out ground truth, through the runner's own steps, as ``bench run --selection top`` does them:
    :func:`benchmark.evaluation.estimation.evaluate_estimator`, :func:`~benchmark.evaluation.estimation.ihvp_residuals`,
    :func:`~benchmark.evaluation.selections.select`, :func:`~benchmark.evaluation.recording.score_selection` and the
    run's ground truth. The ground truth stays in ``cache``.

    Returns:
        ``{"n_train", "n_params", "test_index", "threads", "estimators": {name: Outcome as a dict}}``.
    """
    run, problem, protocol, test_index = build(case, size, cache, options, estimators)
    test_gradient = problem.test_gradients([test_index])
    problem.warm_up()
    for evaluation in run.estimators:
        evaluate_estimator(evaluation, problem, test_index, test_gradient)
    ihvp_residuals(run.estimators, problem, test_gradient)
    outcomes: dict[str, Outcome] = {}
    for evaluation in run.estimators:
        name, error = evaluation.estimator.name, evaluation.error
        if evaluation.failure is None:
            outcomes[name] = Outcome("ok", residual=evaluation.residual, models_s=evaluation.timings.get("models_s"))
        elif isinstance(error, EstimatorFailed):  # a refusal (skipped, diverged): its timings are skipped
            outcomes[name] = Outcome("declined", error.reason)
        else:  # a bug, not a refusal: the timings of this pair will fail and show it
            outcomes[name] = Outcome("error", f"{type(error).__name__}: {error}")

    scored = [evaluation for evaluation in run.estimators if evaluation.failure is None]
    if size == "small" and scored:
        k = min(protocol.eval_size, problem.n_train)
        top = {evaluation.estimator.name: select("top", evaluation.scores, k, []) for evaluation in scored}
        (ground_truth,) = run.ground_truths(problem, protocol, test_index)
        effects = ground_truth.effects(sorted({i for indices in top.values() for i in indices}))
        for evaluation in scored:
            name = evaluation.estimator.name
            _, _, metrics = score_selection(evaluation.scores, top[name], [effects])
            outcomes[name].spearman = metrics["spearman"]["value"]
            outcomes[name].spearman_undefined = metrics["spearman"].get("undefined")
    return {
        "n_train": problem.n_train,
        "n_params": problem.n_params,
        "test_index": test_index,
        "threads": torch.get_num_threads(),
        "estimators": {name: dataclasses.asdict(outcome) for name, outcome in outcomes.items()},
    }


def key(case: str, size: str) -> str:
    """The artefacts' key of ``case`` at ``size``."""
    return f"{case}|{size}"


def make_artefacts() -> str:
    """The suite's ``setup_cache``: evaluate every (case, size) that runs here; returns the path of a JSON file
    (read back with :func:`load_artefacts`, so nothing is unpickled but a path)."""
    cache = cache_dir()
    names = estimator_names()
    data = {"cache_dir": str(cache), "device": device(), "estimators": names, "cases": {}}
    for case in CASES:
        for size in SIZES:
            if skip_reason(case, size) is None:
                data["cases"][key(case, size)] = evaluate(case, size, cache, names)
    path = Path.cwd() / ARTEFACTS
    path.write_text(json.dumps(data, indent=1))
    return str(path)


def load_artefacts(path: str) -> dict[str, Any]:
    """What :func:`make_artefacts` wrote."""
    return json.loads(Path(path).read_text())


def case_entry(artefacts: dict[str, Any], case: str, size: str) -> dict[str, Any]:
    """The artefacts of ``case`` at ``size``; ``NotImplementedError`` (asv: skipped) if it does not run here."""
    reason = skip_reason(case, size)
    if reason is not None:
        raise NotImplementedError(reason)
    return artefacts["cases"][key(case, size)]


def outcome(artefacts: dict[str, Any], case: str, estimator: str, size: str) -> dict[str, Any]:
    """The outcome of ``estimator`` on ``case`` at ``size``; ``NotImplementedError`` (asv: skipped) where the case
    does not run here or the estimator declined it (the reason is the message)."""
    entry = case_entry(artefacts, case, size)["estimators"][estimator]
    if entry["status"] == "declined":
        raise NotImplementedError(f"{estimator} declined {case} at size {size}: {entry['reason']}")
    return entry


class Prepared:
    """A problem built for one benchmark process (its optimum comes from the suite's cache) and a new estimator."""

    def __init__(
        self, artefacts: dict[str, Any], case: str, estimator: str, size: str, prepare: bool, models: bool = False
    ):
        self.outcome = outcome(artefacts, case, estimator, size)
        run, self.problem, _, self.test_index = build(case, size, Path(artefacts["cache_dir"]), estimators=[estimator])
        if not prepare:  # a timed preparation computes what it needs: no dense Hessian or checkpoints from the cache
            self.problem = from_scratch(self.problem, keep_models=models)
        expected = case_entry(artefacts, case, size)["test_index"]
        if self.test_index != expected:
            raise RuntimeError(f"{case} at size {size}: test point {self.test_index}, but setup_cache chose {expected}")
        # torch's one-off start-up (per-example gradients through vmap, forward-mode AD: about 0.9 s) is paid here, as
        # `bench run` pays it before its first estimator, not by whichever timed call first needs it
        self.problem.test_gradients([self.test_index])
        self.problem.warm_up()
        synchronize()
        self.estimator = run.estimators[0].estimator  # its hyperparameters as bench run resolves them
        if prepare:
            self.estimator.prepare(self.problem)
        synchronize()

    def influence(self) -> torch.Tensor:
        """Influence of every training point on the test point (one iHVP and the products with every gradient)."""
        values = self.estimator.influence([self.test_index])
        synchronize()
        return values


def from_scratch(problem: Problem, keep_models: bool = False) -> Problem:
    """``problem`` without the disk caches an estimator's preparation reads: its dense Hessians
    (:attr:`~benchmark.Problem.curvature_cache`, which ``setup_cache``'s evaluation of ``exact`` filled) and, unless
    ``keep_models``, its training run's cache of checkpoints and ensemble members (which ``tracin`` then replays and
    ``trak`` trains, so its time includes what its extra models cost)."""
    run = problem.training_run
    if keep_models or run is None:
        return dataclasses.replace(problem, curvature_cache=None)
    return dataclasses.replace(problem, curvature_cache=None, training_run=run.without_cache())


_PREPARED: dict[tuple[str, str, str, str], Prepared] = {}


def prepared(artefacts: str, case: str, estimator: str, size: str) -> Prepared:
    """A prepared estimator, built once per process: asv re-runs ``setup`` before every sample, and a query needs
    no fresh preparation (queries leave the estimator as they found it)."""
    key = (artefacts, case, estimator, size)
    if key not in _PREPARED:
        _PREPARED[key] = Prepared(load_artefacts(artefacts), case, estimator, size, prepare=True)
    return _PREPARED[key]


def unprepared(artefacts: str, case: str, estimator: str, size: str) -> Prepared:
    """A fresh problem and a new estimator, for timing a preparation from scratch (``exact`` keeps its Hessian on
    the problem, so a problem is never prepared twice)."""
    return Prepared(load_artefacts(artefacts), case, estimator, size, prepare=False)


def own_preparation(artefacts: str, case: str, estimator: str, size: str) -> Prepared:
    """As :func:`unprepared`, but the extra models (checkpoints, ensemble members) come from the cache that
    ``setup_cache``'s evaluation filled: timing it gives the estimator's own preparation, and the difference from
    a preparation from scratch what producing its models costs. ``NotImplementedError`` (asv: skipped) for an
    estimator that uses no extra models, whose own preparation is its whole preparation."""
    data = load_artefacts(artefacts)
    if outcome(data, case, estimator, size).get("models_s") is None:
        raise NotImplementedError(f"{estimator} uses no extra models on {case}: its preparation is time_prepare")
    return Prepared(data, case, estimator, size, prepare=False, models=True)
