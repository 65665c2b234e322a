"""Table 2: the time to compute the influence of one test point over the training set, per estimator and case.

Every class is parameterised by ``case`` (Table 2's task/architecture rows, plus Iris), ``estimator`` (every
registered estimator, found through the plugin manager) and ``size``; what runs is decided in
:mod:`asv_bench.cases`. One ``setup_cache`` (shared through the base class) trains each optimum once, evaluates
every estimator once and computes the leave-one-out ground truth; the benchmarks then time fresh processes.

- ``Prepare.time_prepare``: the estimator's preparation (``Estimator.prepare``; e.g. ``exact`` builds the Hessian).
- ``OwnPreparation.time_prepare_own``: for an estimator that uses extra models (``tracin``'s checkpoints, ``trak``'s
  ensemble), its preparation with those models read from the cache: its own cost, apart from what producing the
  models costs (``time_prepare`` minus this).
- ``Influence.time_influence``: one query, ``Estimator.influence([test])``: one iHVP and its products with every
  training gradient. Table 2's figure is ``time_prepare + time_influence``.
- ``Influence.peakmem_influence``: peak host memory (RSS) of a process that built the problem, prepared and queried.
- ``GpuMemory.track_gpu_peak_memory``: peak CUDA memory of the query (CUDA only).
- ``Spearman.track_spearman``: Spearman correlation of the top-k estimated influences with leave-one-out
  re-training (size ``small``), as ``bench run --selection top`` computes it.
- ``Residual.track_residual``: relative error of the test iHVP against the dense float64 solve, where one exists.
- ``Sizes`` and ``Device``: what was run (training points, parameters and torch threads per case; CUDA or not), for
  ``bench timing``.

asv re-runs ``setup`` before every sample: each ``time_prepare`` sample prepares a freshly built problem (nothing an
estimator keeps on the problem, like ``exact``'s Hessian, survives into the next sample), while the samples of
``time_influence`` share one prepared estimator per process. Every ``setup`` pays torch's one-off start-up
(per-example gradients, forward-mode AD) before anything is timed, as ``bench run`` does (``Problem.warm_up``). No
warm-up call of the timed body: a slow call runs once, a fast one up to ten times (asv reports the median). CUDA
work is synchronised before a timing ends. The clock is the wall clock, or the process's CPU time with
``BENCH_ASV_TIMER=process`` (for a CPU shared with other work).
"""

from __future__ import annotations

import os

import torch

from asv_bench import cases

TIMEOUT = 4 * 3600 if os.environ.get(cases.LARGE_ENV) else 600
"""Seconds a benchmark may take (large sizes take hours on a CPU)."""


class _Suite:
    params = [list(cases.CASES), cases.estimator_names(), list(cases.SIZES)]
    param_names = ["case", "estimator", "size"]
    timeout = TIMEOUT

    def setup_cache(self) -> str:
        return cases.make_artefacts()

    setup_cache.timeout = 6 * TIMEOUT


class _Timed(_Suite):
    number = 1
    repeat = (1, 10, 10.0)  # at least one sample, at most 10, no new sample after 10 s
    rounds = 1
    warmup_time = 0.0  # a slow call is not run twice; the repeats of a fast one make its median warm
    timer = cases.timer()


class Prepare(_Timed):
    """The estimator's preparation on the trained problem (asv re-runs ``setup`` before each sample, so each
    sample prepares a fresh problem)."""

    def setup(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared = cases.unprepared(artefacts, case, estimator, size)

    def time_prepare(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared.estimator.prepare(self.prepared.problem)
        cases.synchronize()


class OwnPreparation(_Timed):
    """The preparation of an estimator that uses extra models, with the models ``setup_cache`` produced read from
    the cache (skipped for the others): Table 2 shows the estimator's own cost and its models' apart."""

    def setup(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared = cases.own_preparation(artefacts, case, estimator, size)

    def time_prepare_own(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared.estimator.prepare(self.prepared.problem)
        cases.synchronize()


class Influence(_Timed):
    """One query: the influence of every training point on the test point."""

    def setup(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared = cases.prepared(artefacts, case, estimator, size)

    def time_influence(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared.influence()

    def peakmem_influence(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.prepared.influence()


class GpuMemory(_Suite):
    """Peak CUDA memory allocated by one query (``peakmem_`` sees host memory only)."""

    def setup(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        if cases.device() != "cuda":
            raise NotImplementedError("GPU memory is tracked on CUDA only")
        self.prepared = cases.prepared(artefacts, case, estimator, size)

    def track_gpu_peak_memory(self, artefacts: str, case: str, estimator: str, size: str) -> int:
        torch.cuda.reset_peak_memory_stats()
        self.prepared.influence()
        return torch.cuda.max_memory_allocated()

    track_gpu_peak_memory.unit = "bytes"


class Spearman(_Suite):
    """Accuracy beside runtime: Spearman of the top-k estimated influences with leave-one-out re-training."""

    def setup(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        if size != "small":
            raise NotImplementedError("the leave-one-out ground truth is computed at size 'small' only")
        self.outcome = cases.outcome(cases.load_artefacts(artefacts), case, estimator, size)
        if self.outcome["status"] != "ok":
            raise RuntimeError(f"{estimator} failed on {case}: {self.outcome['reason']}")

    def track_spearman(self, artefacts: str, case: str, estimator: str, size: str) -> float:
        value = self.outcome["spearman"]
        return float("nan") if value is None else value  # NaN: undefined (constant values), shown as n/a

    track_spearman.unit = "Spearman"


class Residual(_Suite):
    """``|s - s*| / |s*|`` of the test iHVP against the dense float64 solve (where the harness has one)."""

    def setup(self, artefacts: str, case: str, estimator: str, size: str) -> None:
        self.outcome = cases.outcome(cases.load_artefacts(artefacts), case, estimator, size)
        if self.outcome["status"] != "ok":
            raise RuntimeError(f"{estimator} failed on {case}: {self.outcome['reason']}")
        if self.outcome["residual"] is None:
            raise NotImplementedError(f"no dense reference for {case} at size {size} (too many parameters)")

    def track_residual(self, artefacts: str, case: str, estimator: str, size: str) -> float:
        return self.outcome["residual"]

    track_residual.unit = "relative residual"


class Sizes:
    """What each case is at each size: training points and parameters."""

    params = [list(cases.CASES), list(cases.SIZES)]
    param_names = ["case", "size"]
    timeout = TIMEOUT

    setup_cache = _Suite.setup_cache  # the same function, so asv runs it once for every class

    def setup(self, artefacts: str, case: str, size: str) -> None:
        self.entry = cases.case_entry(cases.load_artefacts(artefacts), case, size)

    def track_train_points(self, artefacts: str, case: str, size: str) -> int:
        return self.entry["n_train"]

    track_train_points.unit = "points"

    def track_parameters(self, artefacts: str, case: str, size: str) -> int:
        return self.entry["n_params"]

    track_parameters.unit = "parameters"

    def track_threads(self, artefacts: str, case: str, size: str) -> int:
        return self.entry["threads"]

    track_threads.unit = "threads"


class Device:
    """Where the suite ran (1 on CUDA, 0 on the CPU) and which clock timed it."""

    def track_cuda(self) -> int:
        return int(cases.device() == "cuda")

    track_cuda.unit = "bool"

    def track_process_timer(self) -> int:
        """1 if the ``time_`` benchmarks measured the CPU time of their process (``BENCH_ASV_TIMER=process``)."""
        return int(cases.timer_name() == "process")

    track_process_timer.unit = "bool"
