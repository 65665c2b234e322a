"""Side by side with dattri and pyDVL: agreement, time to a converged answer and peak memory (issue 8).

    python -m benchmark.peers.speed_vs_peers [--models iris,small-cnn,lenet] [--data-dir /tmp/benchdata]
                                             [--timeout 600] [--workdir DIR] [--output leaderboards/speed.md]

Needs the peers extra (``pip install -e '.[peers]'``). For every model it runs our ``exact``, ``cg`` five ways
(independent CG per test point, the algorithm the peers run by default; block CG, our default; block CG
preconditioned by a Nyström sketch; and independent and block CG started, like dattri's and pyDVL's CG, from
``t_0 = v`` instead of zero, which the peers' CG is compared with at equal iterations: from different starts the
iterates differ even in exact arithmetic) and ``lissa``,
dattri's ``IFAttributorExplicit``, ``IFAttributorCG`` and ``IFAttributorLiSSA`` and pyDVL's ``DirectInfluence``,
``CgInfluence`` (independent CG as by default, and its block CG, ``solve_simultaneously``) and ``LissaInfluence``
on the same trained parameters (built through the task, so they come from the
cache), the same training set and the 10 highest-loss test points, at damping 0.01 on top of the task's weight decay.
Where a peer's CG disagrees with ours from the same start (r < 0.99), both rerun that setting in float64
(:func:`rounding_check`). Each measurement runs in a fresh subprocess with one torch thread and a timeout, so that one
crash, hang or memory blow-up does not end the script; its time covers everything from the trained model to the
``10 x n`` scores (test gradients, iHVPs, training-side products), and its peak memory is the process's peak resident
set size during the measurement (``VmHWM`` after resetting it through ``/proc/self/clear_refs``). dattri's CG on LeNet
(5,500 images in one training batch, as its CG needs: it sums the iHVPs of separate batches) is killed by the
out-of-memory killer on this 24 GB machine, whether it gets the 10 test points at once or one at a time. dattri's LiSSA
fails on the float64 Iris model (a float32 tensor of its own meets the model's float64 ones). pyDVL's Hessian averages
the products of its loader's batches with equal weights, which is the full-data Hessian when the batches are of one
size, so on the MNIST models its CG runs both with the whole training set as one batch and in batches of
:func:`pydvl_batch` (the largest divisor of ``n`` up to :data:`PYDVL_BATCH`, about the size at which this CPU's
allocator reuses memory; ours takes pieces of a similar size, ``Problem.PASS_BYTES``).

Every finished measurement is kept in ``--workdir`` (default ``$BENCH_CACHE_DIR/speed-vs-peers``, else
``~/.cache/bench/speed-vs-peers``) under a digest of its job, so an interrupted run resumes where it stopped and a
rerun only renders; the report names the commits the measurements ran on. Delete the directory to measure afresh.

Sign conventions, aligned to ours before any comparison (pinned by ``tests/test_speed_vs_peers.py``):

* ours (``Estimator.influence``): ``[m, n]``, ``+(1/n) g_test^T (H + lambda I)^-1 g_i``, the change of the test loss
  when training point ``i`` is removed;
* dattri (``attribute``): ``[n, m]``, ``g_i^T (H + lambda I)^-1 g_test`` (no ``1/n``): ours is its transpose over n;
* pyDVL (``influences``, mode ``up``): ``[m, n]``, ``<(H + lambda I)^-1 g_test, g_i>``: ours is it over n.

Agreement is the Pearson correlation over the training points, per test point; the tables give the worst of the 10.
The reference is a tightly converged solve: the dense float64 ``exact`` where it fits (Iris), else our CG to
``REFERENCE_TOL``. "Time to 0.99" is the time of the first setting of each sweep whose worst correlation with the
reference reaches 0.99; a sweep stops at its first failure or timeout.

Our estimators and the tasks come from the plugin registry (:func:`registry`), as ``bench run`` takes them; this
module imports neither ``estimators`` nor ``tasks``. It is one module, over 400 lines, because it is one measurement:
the driver, the worker it starts as ``python -m benchmark.peers.speed_vs_peers --worker`` and the report, which the
tests exercise together through one namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.common import markdown, provenance

REPO = Path(__file__).resolve().parents[2]
"""The repository (where ``leaderboards/`` is and where the worker subprocesses start)."""
MODULE = "benchmark.peers.speed_vs_peers"
"""This module's import name: the worker runs as ``python -m MODULE --worker``."""
DAMPING = 0.01
TEST_POINTS = 10
THRESHOLD = 0.99
REFERENCE_TOL = 1e-6
REFERENCE_MAX_ITER = 2000
LISSA_BATCH = 32
TRAIN_CHUNK = 1000
"""Training points per pyDVL ``influences_from_factors`` call (one iHVP solve is shared by all chunks)."""
PYDVL_BATCH = 256
"""At most this many training examples per batch of pyDVL's loader in its batched CG runs (:func:`pydvl_batch`; its
default-like runs take the whole set)."""

TOOLS = ("ours", "dattri", "pydvl")
METHOD_NAMES = {
    ("ours", "exact"): "exact",
    ("ours", "cg"): "cg",
    ("ours", "lissa"): "lissa",
    ("dattri", "exact"): "IFAttributorExplicit",
    ("dattri", "cg"): "IFAttributorCG",
    ("dattri", "lissa"): "IFAttributorLiSSA",
    ("pydvl", "exact"): "DirectInfluence",
    ("pydvl", "cg"): "CgInfluence",
    ("pydvl", "lissa"): "LissaInfluence",
    ("pydvl", "bcg"): "CgInfluence (block)",
    ("ours", "bcg"): "cg (block)",
    ("ours", "pcg"): "cg (block, nystrom)",
    ("ours", "rcg"): "cg (from v)",
    ("ours", "rbcg"): "cg (block, from v)",
}
OUR_CG = {
    "cg": {"block": False},
    "bcg": {},
    "pcg": {"preconditioner": "nystrom"},
    "rcg": {"block": False, "start": "rhs"},
    "rbcg": {"start": "rhs"},
}
"""Our CG variants: ``cg`` options over the defaults (``block: true``, ``start: zero``)."""
SAME_START = {"cg": "rcg", "bcg": "rbcg"}
"""The variant of ours that a peer's CG method is compared with at equal iterations: started, like the peers' CG, from
``t_0 = v`` (so that the iterates agree in exact arithmetic)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the benchmark: its task, ``--set`` options and sweeps.

    Attributes:
        label: the name in the tables.
        task: the harness task that trains it.
        options: task config fields (``--set TASK.FIELD=VALUE``).
        dense: whether the dense methods (``exact`` and the peers' explicit solvers) fit.
        cg_iterations: CG iteration counts swept for every tool.
        lissa_depths: LiSSA depths swept for every tool.
        block_iterations: iteration counts swept for our block CG, plain and preconditioned.
        cached_hessian: where the dense methods do not fit a measurement, the precision of the products of a dense
            Hessian of the same optimum that a Table 1 ``exact`` run may have left in the harness's cache; if it
            is there, the report cross-checks the reference against our exact solve on it (never built here).
    """

    label: str
    task: str
    options: dict[str, Any]
    dense: bool
    cg_iterations: tuple[int, ...]
    lissa_depths: tuple[int, ...]
    block_iterations: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10)
    cached_hessian: str | None = None


MODELS: dict[str, ModelSpec] = {
    "iris": ModelSpec("iris", "iris", {}, True, (5, 10, 20, 40, 80), (500, 2000, 8000)),
    "small-cnn": ModelSpec(
        "small-cnn",
        "mnist",
        {"model": "small-cnn"},
        False,
        (10, 15, 20, 25, 50, 100),
        (1000, 4000),
        (2, 3, 4, 5, 6, 8, 9, 10, 12, 15, 20),
        cached_hessian="float32",
    ),
    "lenet": ModelSpec("lenet", "mnist", {"model": "lenet"}, False, (6, 8, 10, 25, 50, 100), (1000, 4000)),
}


@dataclasses.dataclass(frozen=True)
class Job:
    """One measurement: ``tool``'s ``method`` at ``setting`` (CG iterations, LiSSA depth; 0 for dense) on ``model``.

    ``tol`` > 0 runs our CG to that relative residual (the reference) instead of a fixed iteration count; ``scale`` is
    the LiSSA scale shared by all tools (ours picks it by power iteration when it is ``None``). ``code`` is the
    digest of our sources that one of our measurements ran (:func:`our_code`), so that it is redone when they
    change; empty for the peers, whose code is their pinned release. ``batch`` is the training examples per batch
    of a peer's data loader, 0 for the whole set in one batch. ``dtype`` (``float64``) casts the problem, model and
    data before the measurement (:func:`rounding_check`); empty for the task's own precision.
    """

    model: str
    tool: str
    method: str
    setting: int = 0
    tol: float = 0.0
    scale: float | None = None
    data_dir: str | None = None
    code: str = ""
    batch: int = 0
    dtype: str = ""

    @property
    def name(self) -> str:
        name = METHOD_NAMES[self.tool, self.method]
        if self.batch:
            name += f", batches of {self.batch}"
        return f"{name}, {self.dtype}" if self.dtype else name

    @property
    def setting_label(self) -> str:
        if self.method == "exact":
            return "dense"
        if self.tol:
            return f"tol {self.tol:g}"
        return f"depth {self.setting}" if self.method == "lissa" else f"{self.setting} it"


@dataclasses.dataclass
class Outcome:
    """What a measurement gave: ``status`` is ``ok``, ``timeout`` or ``failed`` (``message`` says why)."""

    job: Job
    status: str
    seconds: float | None = None
    peak_mib: float | None = None
    base_mib: float | None = None
    scores: Tensor | None = None
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    message: str = ""
    correlation: Tensor | None = None
    agreement: Tensor | None = None
    commit: str | None = None
    load: float | None = None
    """The machine's 1-minute load average as the measurement ended: about 1 when it ran alone."""


# -- sign conventions and statistics (pure; tested) ----------------------------------------------------------------
def align(tool: str, raw: Tensor, n_train: int) -> Tensor:
    """A tool's raw scores in our convention: ``Tensor[m, n]`` of ``+(1/n) g_test^T (H + lambda I)^-1 g_i``."""
    raw = torch.as_tensor(raw).detach().to(torch.float64)
    if tool == "ours":
        return raw
    if tool == "dattri":
        return raw.T / n_train
    if tool == "pydvl":
        return raw / n_train
    raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(TOOLS)}")


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``Tensor[m]`` (NaN for a constant row)."""
    a = a.to(torch.float64) - a.to(torch.float64).mean(dim=1, keepdim=True)
    b = b.to(torch.float64) - b.to(torch.float64).mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1))


def worst(correlation: Tensor | None) -> float:
    """The worst correlation over test points (NaN counts as the worst)."""
    if correlation is None or correlation.numel() == 0:
        return float("nan")
    return float("nan") if bool(torch.isnan(correlation).any()) else float(correlation.min())


def first_reaching(outcomes: Sequence[Outcome], threshold: float = THRESHOLD) -> Outcome | None:
    """The first successful outcome of a sweep (in order) whose worst correlation reaches ``threshold``."""
    for outcome in outcomes:
        if outcome.status == "ok" and worst(outcome.correlation) >= threshold:
            return outcome
    return None


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def outcome_cells(outcome: Outcome) -> list[str]:
    """Time, peak memory and correlations of one outcome, or its failure."""
    if outcome.status != "ok":
        return [outcome.status + (f": {outcome.message}" if outcome.message else ""), "", "", ""]
    return [
        fmt(outcome.seconds, ".3g"),
        fmt(outcome.peak_mib, ".0f"),
        fmt(worst(outcome.correlation), ".4f"),
        fmt(worst(outcome.agreement), ".4f"),
    ]


def reference_caveat(ref: Outcome) -> str:
    """What the report must say about a reference that did not converge, and why it did not."""
    if ref.diagnostics.get("converged") is not False:
        return ""
    if ref.diagnostics.get("iterations", 0) >= ref.job.setting:
        return (
            " It is NOT converged (the iteration cap ran out first): every correlation below is against a "
            "partial solve, and only the agreement at equal settings is conclusive."
        )
    why = (
        "it stopped at the precision floor (no new low of the residual in the last iterations)"
        if ref.diagnostics.get("stalled")
        else "its iteration reached the tolerance"
    )
    return (
        f" Its true relative residual, {fmt(ref.diagnostics.get('relative_residual'), '.2g')}, is above the "
        f"requested {ref.job.tol:g} (float32 products carry relative errors of about 1e-5), so it counts as not "
        f"converged: {why}. A correlation of 0.99 is far coarser."
    )


def render(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """The Markdown report: per model, time to 0.99 and every measurement, with a banner and the environment."""
    commits = sorted(
        {
            o.commit
            for result in results.values()
            for o in [result["reference"]]
            + [o for sweep in result["sweeps"].values() for o in sweep]
            + [o for check in result.get("rounding", []) for o in check[1:]]
            if o.commit
        }
    )
    out = [
        "# Speed against dattri and pyDVL",
        "",
        f"<!-- generated by `python -m {MODULE}`, do not edit -->",
        f"Generated by `{meta['command']}`; do not edit.",
        "",
        f"Device: {meta['device']}; torch threads: 1 per measurement (each in its own process); load average at the "
        f"start {meta['load']}. Versions: {meta['versions']}. Commit: {meta['commit']}"
        + (f" (measurements, some reused from earlier runs: {', '.join(commits)})" if commits else "")
        + f". Date: {meta['date']}.",
        "",
        f"Setting: damping {DAMPING} (added to the task's weight decay), the {TEST_POINTS} highest-loss test points, "
        "float32 on MNIST and float64 on Iris, identical parameters and data for every tool. Time: from the trained "
        "model to the scores of every training point for the test points; peak: the process's peak resident memory "
        "during the measurement (baseline of the loaded data and model included, shown apart); load: the "
        "machine's 1-minute load average as it ended (about 1: it ran alone; about 2: beside another one-thread "
        "measurement on the 2 cores; blank: measured before loads were recorded). Correlation: "
        "Pearson over training points, worst of the test points, against the reference (r ref) and against our "
        "result at the same setting (r ours; for the peers' CG, ours started like theirs from t0 = v). Sign "
        "conventions are aligned to ours (see the script's docstring).",
        "",
    ]
    for label, result in results.items():
        ref: Outcome = result["reference"]
        out += [
            f"## {label}",
            "",
            result["summary"],
            "",
            f"Reference: {ref.job.name} ({ref.job.setting_label}), {fmt(ref.seconds, '.3g')} s, "
            f"diagnostics {json.dumps(ref.diagnostics, sort_keys=True)}."
            + reference_caveat(ref)
            + result.get("cross_check", ""),
            "",
            "### Time to a correlation >= 0.99 with the reference",
            "",
        ]
        rows = []
        for (tool, _), sweep in result["sweeps"].items():
            hit = first_reaching(sweep)
            name = sweep[0].job.name
            if hit is not None:
                rows.append(
                    [
                        tool,
                        name,
                        hit.job.setting_label,
                        fmt(hit.seconds, ".3g"),
                        fmt(hit.peak_mib, ".0f"),
                        fmt(worst(hit.correlation), ".4f"),
                    ]
                )
            else:
                done = [o for o in sweep if o.status == "ok"]
                best = max((worst(o.correlation) for o in done), default=float("nan"))
                last = sweep[-1] if sweep else None
                why = f"not reached (best r {fmt(best, '.4f')}"
                why += f"; stopped: {last.status})" if last is not None and last.status != "ok" else ")"
                rows.append([tool, name, why, "", "", ""])
        out += [
            markdown.table(["tool", "method", "first setting", "time (s)", "peak (MiB)", "r ref"], rows),
            "",
            "### Every measurement",
            "",
        ]
        rows = []
        for sweep in result["sweeps"].values():
            for outcome in sweep:
                rows.append(
                    [
                        outcome.job.tool,
                        outcome.job.name,
                        outcome.job.setting_label,
                        *outcome_cells(outcome),
                        fmt(outcome.base_mib, ".0f"),
                        fmt(outcome.load, ".1f"),
                        json.dumps(outcome.diagnostics, sort_keys=True) if outcome.diagnostics else "",
                    ]
                )
        out += [
            markdown.table(
                [
                    "tool",
                    "method",
                    "setting",
                    "time (s)",
                    "peak (MiB)",
                    "r ref",
                    "r ours",
                    "baseline (MiB)",
                    "load",
                    "diagnostics",
                ],
                rows,
            ),
            "",
        ]
        if result.get("rounding"):
            out += [
                "### CG agreement in float64",
                "",
                "Each peer CG sweep's first setting whose worst r with ours from the same start is below "
                f"{THRESHOLD} in float32, rerun by both tools in float64 (problem, model and data cast; the same "
                "test points). Equal in exact arithmetic, the two agree in float64 where float32 rounding was "
                "what separated them.",
                "",
            ]
            rows = [
                [
                    peer.job.tool,
                    below.job.name,
                    below.job.setting_label,
                    fmt(worst(below.agreement), ".4f"),
                    fmt(worst(peer.agreement), ".4f")
                    if peer.status == "ok" and ours.status == "ok"
                    else f"ours {ours.status}, peer {peer.status}",
                    *(fmt(o.seconds, ".3g") for o in (ours, peer)),
                ]
                for below, ours, peer in result["rounding"]
            ]
            out += [
                markdown.table(
                    [
                        "tool",
                        "method",
                        "setting",
                        "r ours (float32)",
                        "r ours (float64)",
                        "ours float64 (s)",
                        "peer float64 (s)",
                    ],
                    rows,
                ),
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


# -- the worker: one measurement in a fresh process -----------------------------------------------------------------
@functools.cache
def registry() -> Any:
    """The harness's plugin registry (built-in and installed plugins, as ``bench run`` loads them): where the tasks
    and our estimators come from."""
    from benchmark.contracts.plugins import Registry, plugin_manager

    return Registry(plugin_manager())


def estimator(name: str, **options: Any) -> Any:
    """The registered estimator ``name`` with its config's ``options`` (the rest at their defaults)."""
    cls = registry().estimator(name)
    return cls(cls.Config(**options))


def build_problem(spec: ModelSpec, data_dir: str | None) -> tuple[Any, Any]:
    """The task and its trained problem (from the cache when trained before), with its ``curvature_cache``."""
    from benchmark.common import config as configuration
    from benchmark.common.cache import Cache
    from benchmark.contracts.task import BuildContext

    task_cls = registry().task(spec.task)
    options = dict(spec.options)
    if spec.task != "iris" and data_dir:
        options["data_dir"] = data_dir
    task = task_cls(configuration.build(task_cls.Config, options, spec.task))
    return task, task.build(BuildContext("cpu", 0, Cache(), progress=False))


def test_points(problem: Any) -> Tensor:
    """The :data:`TEST_POINTS` highest-loss test points, the same for every tool."""
    return torch.argsort(problem.test_losses(), descending=True)[:TEST_POINTS]


def module_at(spec: ModelSpec, task: Any, problem: Any) -> torch.nn.Module:
    """The task's ``nn.Module`` holding the problem's parameters (for the peers, which take modules), built by the
    plugin module that defines the registered task class (Iris: ``mlp``; the vision tasks: ``build_model``)."""
    plugin = sys.modules[type(task).__module__]
    if spec.task == "iris":
        c = task.config
        module = plugin.mlp(c.depth, c.width, c.activation)
    else:
        module = plugin.build_model(task.config.model, task.channels, task.image_size)
    module = module.to(problem.dtype)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(problem.params[name])
    x = problem.x_test[:4]
    if not torch.allclose(module(x), problem.model(problem.params, x), rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"the rebuilt {spec.label} module does not compute the problem's model")
    return module


def mean_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    from benchmark.numerics.losses import cross_entropy

    return cross_entropy(outputs, targets.long()).mean()


def run_ours(job: Job, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, Any]]:
    if job.method == "exact":
        ours = estimator("exact", damping=DAMPING)
    elif job.method in OUR_CG:
        tol, max_iter = (job.tol, job.setting) if job.tol else (1e-30, job.setting)
        ours = estimator("cg", damping=DAMPING, tol=tol, max_iter=max_iter, **OUR_CG[job.method])
    else:
        ours = estimator("lissa", damping=DAMPING, depth=job.setting, batch_size=LISSA_BATCH, scale=job.scale)
    ours.prepare(problem)
    scores = ours.influence(test)
    return scores, dict(ours.diagnostics)


def run_dattri(job: Job, module: torch.nn.Module, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, Any]]:
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit, IFAttributorLiSSA
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return mean_loss(torch.func.functional_call(module, params, (x,)), y)

    task = AttributionTask(loss_func=loss_func, model=module, checkpoints=module.state_dict())
    regularization = problem.weight_decay + DAMPING  # the weight decay's Hessian is weight_decay * I
    n = problem.n_train
    train = DataLoader(TensorDataset(problem.x_train, problem.y_train), batch_size=n, shuffle=False)
    tests = DataLoader(TensorDataset(problem.x_test[test], problem.y_test[test]), batch_size=len(test), shuffle=False)
    if job.method == "exact":
        attributor = IFAttributorExplicit(task=task, device="cpu", regularization=regularization)
    elif job.method == "cg":
        attributor = IFAttributorCG(task=task, device="cpu", max_iter=job.setting, regularization=regularization)
    else:
        # dattri's step is h <- v + (1 - d) h - H_B h / s with result h / s, i.e. (H + d s I)^-1 v: d = lambda / s
        attributor = IFAttributorLiSSA(
            task=task,
            device="cpu",
            batch_size=LISSA_BATCH,
            recursion_depth=job.setting,
            scaling=job.scale,
            damping=regularization / job.scale,
        )
    attributor.cache(train)
    return attributor.attribute(train, tests), {}


def run_pydvl(job: Job, module: torch.nn.Module, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, Any]]:
    from pydvl.influence.torch import CgInfluence, DirectInfluence, LissaInfluence
    from torch.utils.data import DataLoader, TensorDataset

    regularization = problem.weight_decay + DAMPING
    n = problem.n_train
    data = TensorDataset(problem.x_train, problem.y_train)
    if job.method == "exact":
        model = DirectInfluence(module, mean_loss, regularization=regularization)
        loader = DataLoader(data, batch_size=n)
    elif job.method in ("cg", "bcg"):
        # rtol = atol = 0: exactly `maxiter` iterations, like the other tools at this setting
        model = CgInfluence(
            module,
            mean_loss,
            regularization=regularization,
            rtol=0.0,
            atol=0.0,
            maxiter=job.setting,
            solve_simultaneously=job.method == "bcg",
            warn_on_max_iteration=False,
        )
        loader = DataLoader(data, batch_size=job.batch or n)
    else:
        model = LissaInfluence(
            module,
            mean_loss,
            regularization=regularization,
            maxiter=job.setting,
            scale=job.scale,
            dampen=0.0,
            rtol=0.0,
            warn_on_max_iteration=False,
        )
        loader = DataLoader(data, batch_size=LISSA_BATCH)
    model = model.fit(loader)
    factors = model.influence_factors(problem.x_test[test], problem.y_test[test])
    scores = torch.cat(
        [
            model.influences_from_factors(
                factors, problem.x_train[i : i + TRAIN_CHUNK], problem.y_train[i : i + TRAIN_CHUNK]
            )
            for i in range(0, n, TRAIN_CHUNK)
        ],
        dim=1,
    )
    return scores, {}


def rss_mib(field: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` of this process in MiB (``None`` where ``/proc`` has no such field)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset this process's peak resident set size (``VmHWM``) to the current one; ``False`` where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def warm_up(tool: str, problem: Any) -> None:
    """Pay the one-off costs outside the timed part: the tool's imports and the first ``torch.func`` transforms
    (about 6 s on the first call in a process here, whatever the problem size)."""
    if tool == "dattri":
        import dattri.algorithm.influence_function  # noqa: F401
    elif tool == "pydvl":
        import pydvl.influence.torch  # noqa: F401
    else:
        registry()  # imports the built-in estimators
    few = type(problem)(
        problem.model,
        problem.loss,
        problem.params,
        problem.x_train[:2],
        problem.y_train[:2],
        problem.x_test[:2],
        problem.y_test[:2],
        problem.weight_decay,
    )
    vectors = torch.zeros(2, few.n_params, dtype=few.dtype)
    few.hvp(vectors)
    few._hvp_on(vectors, few.x_train, few.y_train)
    few.train_gradient_products(vectors)
    few.test_gradients([0, 1])


def worker(job: Job, scores_path: Path) -> dict[str, Any]:
    """Run one measurement and save its aligned scores; returns its timing, memory and diagnostics."""
    import resource

    torch.set_num_threads(1)
    spec = MODELS[job.model]
    task, problem = build_problem(spec, job.data_dir)
    # no Hessian from an earlier run's cache: every measurement times the whole computation
    problem = dataclasses.replace(problem, curvature_cache=None)
    test = test_points(problem)
    if job.dtype:
        problem = problem.to(dtype=getattr(torch, job.dtype))
    module = module_at(spec, task, problem) if job.tool != "ours" else None
    warm_up(job.tool, problem)
    reset = reset_peak()
    base = rss_mib("VmRSS")
    start = time.perf_counter()
    if job.tool == "ours":
        raw, diagnostics = run_ours(job, problem, test)
    elif job.tool == "dattri":
        raw, diagnostics = run_dattri(job, module, problem, test)
    else:
        raw, diagnostics = run_pydvl(job, module, problem, test)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scores = align(job.tool, raw, problem.n_train)
    torch.save({"scores": scores, "test": test}, scores_path)
    return {
        "seconds": seconds,
        "peak_mib": peak,
        "base_mib": base,
        "peak_reset": reset,
        "diagnostics": {k: v for k, v in diagnostics.items() if isinstance(v, (int, float, bool, str))},
    }


def job_fields(job: Job) -> dict[str, Any]:
    """``job`` as a dict, without an empty ``code`` or ``dtype`` or a zero ``batch`` (so a job keeps the name it had
    before those fields)."""
    fields = dataclasses.asdict(job)
    for name in ("code", "batch", "dtype"):
        if not fields[name]:
            del fields[name]
    return fields


def job_digest(job: Job) -> str:
    """A stable name for ``job``'s files in the work directory (the same on every run and machine)."""
    import hashlib

    return hashlib.sha256(json.dumps(job_fields(job), sort_keys=True).encode()).hexdigest()[:20]


def our_code(root: Path = REPO) -> str:
    """A digest of the code of our measurements (the harness, the built-in estimators and tasks; not this
    measurement package, ``benchmark/peers``, whose edits change no measured number):
    :func:`benchmark.common.provenance.source_digest`, so that editing a docstring or a comment does not redo an hour of
    measurements."""
    paths = provenance.code_files(root)
    return provenance.source_digest(paths, root)[:12]


def measure(job: Job, timeout: float, workdir: Path) -> Outcome:
    """Run ``job`` in a fresh subprocess with one thread and a timeout, unless ``workdir`` holds its outcome (ours:
    measured on the same sources)."""
    if job.tool == "ours" and not job.code:
        job = dataclasses.replace(job, code=our_code())
    stem = workdir / job_digest(job)
    scores_path, info_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
    label = f"{job.model} {job.tool} {job.name} {job.setting_label}"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("job") == job_fields(job) and (info["status"] != "ok" or scores_path.exists()):
            print(f"[{time.strftime('%H:%M:%S')}] {label}: measured before ({info['status']}), reused", flush=True)
            scores = torch.load(scores_path, weights_only=True)["scores"] if info["status"] == "ok" else None
            return Outcome(
                job,
                info["status"],
                info.get("seconds"),
                info.get("peak_mib"),
                info.get("base_mib"),
                scores,
                info.get("diagnostics", {}),
                info.get("message", ""),
                commit=info.get("commit"),
                load=info.get("load"),
            )
    outcome = _measure(job, timeout, scores_path, label)
    record = {
        "job": job_fields(job),
        "status": outcome.status,
        "seconds": outcome.seconds,
        "peak_mib": outcome.peak_mib,
        "base_mib": outcome.base_mib,
        "diagnostics": outcome.diagnostics,
        "message": outcome.message,
        "commit": outcome.commit,
        "load": outcome.load,
    }
    info_path.write_text(json.dumps(record, indent=1))
    return outcome


def _measure(job: Job, timeout: float, scores_path: Path, label: str) -> Outcome:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    command = [sys.executable, "-m", MODULE, "--worker", json.dumps(job_fields(job)), "--scores", str(scores_path)]
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"    timeout after {timeout:.0f} s", flush=True)
        return Outcome(
            job, "timeout", message=f"over {timeout:.0f} s", commit=current_commit(), load=os.getloadavg()[0]
        )
    load = os.getloadavg()[0]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        if done.returncode < 0:
            tail = f"killed by signal {-done.returncode}" + (" (out of memory?)" if done.returncode == -9 else "")
        print(f"    failed: {tail}", flush=True)
        return Outcome(job, "failed", message=tail[:160].replace("|", "/"), commit=current_commit(), load=load)
    info = json.loads(lines[-1][len("RESULT ") :])
    saved = torch.load(scores_path, weights_only=True)
    print(f"    {info['seconds']:.1f} s, peak {info['peak_mib']:.0f} MiB {info['diagnostics']}", flush=True)
    return Outcome(
        job,
        "ok",
        info["seconds"],
        info["peak_mib"],
        info["base_mib"],
        saved["scores"],
        info["diagnostics"],
        commit=current_commit(),
        load=load,
    )


# -- the driver -----------------------------------------------------------------------------------------------------
def sweep(jobs: Sequence[Job], run: Callable[[Job], Outcome], score: Callable[[Outcome], None]) -> list[Outcome]:
    """Run ``jobs`` in order until one fails or times out, or one reaches the threshold."""
    outcomes = []
    for job in jobs:
        outcome = run(job)
        score(outcome)
        outcomes.append(outcome)
        if outcome.status != "ok" or worst(outcome.correlation) >= THRESHOLD:
            break
    return outcomes


def pydvl_batch(n_train: int) -> int:
    """The largest divisor of ``n_train`` up to :data:`PYDVL_BATCH`: pyDVL's ``HessianOperator`` averages its batches'
    products with equal weights (``ChunkAveraging``), so a smaller last batch would weigh its examples more."""
    return max(d for d in range(1, min(PYDVL_BATCH, n_train) + 1) if n_train % d == 0)


def benchmark_model(spec: ModelSpec, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    def run(job: Job) -> Outcome:
        return measure(job, args.timeout, workdir)

    data_dir = args.data_dir
    if spec.dense:
        reference = run(Job(spec.label, "ours", "exact", data_dir=data_dir))
    else:
        reference = run(
            Job(spec.label, "ours", "bcg", setting=args.reference_max_iter, tol=REFERENCE_TOL, data_dir=data_dir)
        )
    if reference.status != "ok":
        raise SystemExit(f"the reference for {spec.label} failed: {reference.message}")
    reference.correlation = pearson_rows(reference.scores, reference.scores)
    ours_at: dict[tuple[str, int], Outcome] = {}

    def score(outcome: Outcome) -> None:
        if outcome.status != "ok":
            return
        outcome.correlation = pearson_rows(outcome.scores, reference.scores)
        key = (outcome.job.method, outcome.job.setting)
        if outcome.job.tool == "ours":
            ours_at[key] = outcome
            return
        key = (SAME_START.get(outcome.job.method, outcome.job.method), outcome.job.setting)
        if key in ours_at:
            outcome.agreement = pearson_rows(outcome.scores, ours_at[key].scores)

    sweeps: dict[tuple[str, str], list[Outcome]] = {}
    # ours from the peers' start first, so that each peer's CG is compared with it at every setting both ran
    methods = (["exact"] if spec.dense else []) + ["rcg", "cg", "rbcg", "bcg", "pcg", "lissa"]
    family = {"cg": "cg", "rcg": "cg", "bcg": "cg", "rbcg": "cg", "pcg": "cg", "lissa": "lissa"}
    # like --cg-iterations and --lissa-depths, --methods is for the MNIST models: Iris runs everything in seconds
    skipped = sorted({family[m] for m in methods if m != "exact" and not spec.dense and family[m] not in args.methods})
    methods = [m for m in methods if m == "exact" or spec.dense or family[m] in args.methods]
    for method in methods:
        scale = None
        for tool in TOOLS:
            if method in ("pcg", "rcg", "rbcg") and tool != "ours" or method == "bcg" and tool == "dattri":
                continue
            batches = [0]
            if tool == "pydvl" and method in ("cg", "bcg") and not spec.dense:  # Iris fits one batch of 256
                batch = pydvl_batch(reference.scores.shape[-1])
                batches = [0, batch] if method == "cg" else [batch]
            for batch in batches:
                key = (tool, f"{method}, batches of {batch}" if batch else method)
                if method == "exact":
                    jobs = [Job(spec.label, tool, "exact", data_dir=data_dir)]
                    if tool == "ours":
                        sweeps[key] = [reference]
                        reference.agreement = reference.correlation
                        ours_at["exact", 0] = reference
                        continue
                elif method in ("cg", "rcg"):
                    jobs = [
                        Job(spec.label, tool, method, setting=k, data_dir=data_dir, batch=batch)
                        for k in (not spec.dense and args.cg_iterations) or spec.cg_iterations
                    ]
                elif method in ("bcg", "rbcg", "pcg"):
                    jobs = [
                        Job(spec.label, tool, method, setting=k, data_dir=data_dir, batch=batch)
                        for k in spec.block_iterations
                    ]
                else:
                    jobs = [
                        Job(spec.label, tool, "lissa", setting=d, scale=scale, data_dir=data_dir)
                        for d in (not spec.dense and args.lissa_depths) or spec.lissa_depths
                    ]
                # every tool sweeps the same grid until it reaches the threshold: agreement is measured at every
                # setting both ran, and each tool's time to 0.99 is its own, not cut short where ours stopped
                sweeps[key] = sweep(jobs, run, score)
                if method == "lissa" and tool == "ours" and scale is None:
                    scale = next((o.diagnostics.get("scale") for o in sweeps[key] if o.status == "ok"), None)
                    if scale is None:
                        raise SystemExit(f"our LiSSA failed on {spec.label}; no scale to share with the peers")
    summary = summarise(spec, sweeps)
    if skipped:
        summary += f" Not measured in this invocation (--methods): {', '.join(skipped)}."
    return {
        "reference": reference,
        "sweeps": sweeps,
        "summary": summary,
        "cross_check": dense_cross_check(spec, data_dir, reference),
        "rounding": rounding_check(sweeps, run),
    }


def rounding_check(
    sweeps: dict[tuple[str, str], list[Outcome]], run: Callable[[Job], Outcome]
) -> list[tuple[Outcome, Outcome, Outcome]]:
    """Each peer CG sweep's first setting whose worst r with ours from the same start is below :data:`THRESHOLD`,
    rerun by both in float64: ``(float32 peer, float64 ours, float64 peer)``, the last with its agreement.

    Both run the same algorithm on the same system from the same start, so in exact arithmetic their iterates agree;
    if they agree in float64 and not in float32, the float32 rounding of their different summation orders, which CG
    amplifies on an ill-conditioned system, is what separates them.
    """
    checks = []
    for (tool, _), sweep in sweeps.items():
        below = (
            next(
                (
                    o
                    for o in sweep
                    if o.status == "ok"
                    and o.job.method in SAME_START
                    and o.agreement is not None
                    and worst(o.agreement) < THRESHOLD
                ),
                None,
            )
            if tool != "ours"
            else None
        )
        if below is None:
            continue
        ours = run(
            Job(
                below.job.model,
                "ours",
                SAME_START[below.job.method],
                setting=below.job.setting,
                data_dir=below.job.data_dir,
                dtype="float64",
            )
        )
        peer = run(dataclasses.replace(below.job, dtype="float64"))
        if ours.status == "ok" and peer.status == "ok":
            peer.agreement = pearson_rows(peer.scores, ours.scores)
        checks.append((below, ours, peer))
    return checks


class _NotCached(Exception):
    pass


def dense_cross_check(spec: ModelSpec, data_dir: str | None, reference: Outcome) -> str:
    """A sentence on the reference against our exact solve on the dense Hessian of the same optimum, if the harness's
    cache holds one (:attr:`ModelSpec.cached_hessian`); the Hessian is never built here (hours of products)."""
    if spec.cached_hessian is None:
        return ""
    _, problem = build_problem(spec, data_dir)

    class CacheOnly(type(problem)):  # type: ignore[misc]
        def hessian(self, chunk_size: int = 64) -> Tensor:
            raise _NotCached

    exact = estimator("exact", damping=DAMPING, hessian_dtype=spec.cached_hessian)
    try:
        exact.prepare(CacheOnly(**{f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}))
    except _NotCached:
        return (
            f" Not cross-checked: the harness's cache holds no dense Hessian ({spec.cached_hessian} products) of "
            "this optimum; a Table 1 `exact` run on it leaves one."
        )
    agreement = worst(pearson_rows(exact.influence(test_points(problem)), reference.scores))
    return (
        f" Cross-check: against our `exact` on the cached dense Hessian of this optimum ({spec.cached_hessian} "
        f"products, float64 eigendecomposition; built by the Table 1 `exact` run), the reference's worst r is "
        f"{agreement:.6f}."
    )


def summarise(spec: ModelSpec, sweeps: dict[tuple[str, str], list[Outcome]]) -> str:
    """One paragraph: our fastest converged answer against the fastest peer's, and the agreement at equal settings."""

    def fastest(tool: str, peak_mib: float = float("inf")) -> Outcome | None:
        hits = [first_reaching(s) for (t, _), s in sweeps.items() if t == tool]
        hits = [h for h in hits if h is not None and h.peak_mib <= peak_mib]
        return min(hits, key=lambda o: o.seconds) if hits else None

    ours = fastest("ours")
    peers = [h for h in (fastest("dattri"), fastest("pydvl")) if h is not None]
    peer = min(peers, key=lambda o: o.seconds) if peers else None
    parts = []
    if ours is None:
        parts.append("Ours did not reach 0.99 within the sweep.")
    else:
        parts.append(
            f"Ours reaches 0.99 fastest with {ours.job.name} ({ours.job.setting_label}) in "
            f"{ours.seconds:.3g} s at {ours.peak_mib:.0f} MiB peak."
        )
    if peer is None:
        parts.append("No peer configuration reached 0.99 within the sweep and the timeout.")
    elif ours is not None:
        parts.append(
            f"The fastest peer, {peer.job.tool} {peer.job.name} ({peer.job.setting_label}), takes "
            f"{peer.seconds:.3g} s at {peer.peak_mib:.0f} MiB: ours is {peer.seconds / ours.seconds:.1f}x "
            f"faster at {ours.peak_mib / peer.peak_mib:.2f}x its peak memory."
        )
        frugal = fastest("ours", peer.peak_mib)
        if frugal is not None and frugal is not ours:
            parts.append(
                f"At no more peak memory than that peer, ours is fastest with {frugal.job.name} "
                f"({frugal.job.setting_label}): {frugal.seconds:.3g} s at {frugal.peak_mib:.0f} MiB, "
                f"{peer.seconds / frugal.seconds:.1f}x faster."
            )
        elif frugal is None:
            parts.append("No setting of ours reaches 0.99 within that peer's peak memory.")
    agreements = [
        (o.job, worst(o.agreement))
        for (t, _), s in sweeps.items()
        if t != "ours"
        for o in s
        if o.status == "ok" and o.agreement is not None and o.job.method in SAME_START
    ]
    if agreements:
        parts.append(
            "CG at equal iteration counts, worst r with ours from the same start (t0 = v; block CG with "
            "our block CG): "
            + ", ".join(f"{job.tool} {job.name} {job.setting_label} {r:.4f}" for job, r in agreements)
            + "."
        )
    return " ".join(parts)


def current_commit() -> str:
    """The checked-out commit, marked when the code the measurements run differs from it
    (:func:`benchmark.common.provenance.commit_label`)."""
    return provenance.commit_label(("benchmark", "estimators", "tasks", "scripts"), REPO)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("torch", "dattri", "pydvl", "numpy"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} missing")
    commit = current_commit()
    cpu = platform.processor() or platform.machine()
    model_name = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
        if Path("/proc/cpuinfo").exists()
        else cpu
    )
    return {
        "command": f"python -m {MODULE} " + " ".join(args.argv),
        "device": f"CPU ({model_name}, {os.cpu_count()} cores), {platform.system()}",
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "versions": ", ".join(versions),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }


def int_list(text: str) -> tuple[int, ...]:
    """``"10,25,50"`` -> ``(10, 25, 50)``."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def method_list(text: str) -> tuple[str, ...]:
    """``"cg,lissa"`` -> ``("cg", "lissa")``, each checked against the methods there are."""
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [v for v in values if v not in ("cg", "lissa")]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"unknown method {(unknown or [text])[0]!r}; choose from cg, lissa")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="iris,small-cnn,lenet", help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR"), help="MNIST location")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    parser.add_argument(
        "--cg-iterations", type=int_list, help="CG iteration counts to sweep on the MNIST models (default: per model)"
    )
    parser.add_argument(
        "--lissa-depths", type=int_list, help="LiSSA depths to sweep on the MNIST models (default: per model)"
    )
    parser.add_argument(
        "--reference-max-iter",
        type=int,
        default=REFERENCE_MAX_ITER,
        help="iteration cap of the CG reference where no dense solve fits",
    )
    parser.add_argument(
        "--methods",
        type=method_list,
        default=("cg", "lissa"),
        help="sweeps on the MNIST models, comma-separated, from: cg (every CG variant), lissa (the "
        "dense solvers run where they fit, and Iris runs everything); e.g. two processes with "
        "--methods cg and --methods lissa share one --workdir",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where finished measurements are kept (default "
        "$BENCH_CACHE_DIR/speed-vs-peers or ~/.cache/bench/speed-vs-peers)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "leaderboards" / "speed.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw_argv)
    if args.worker:
        info = worker(Job(**json.loads(args.worker)), args.scores)
        print("RESULT " + json.dumps(info), flush=True)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    args.argv = [a for a in raw_argv]
    meta = environment(args)
    from benchmark.common.cache import default_cache_dir

    workdir = args.workdir or default_cache_dir() / "speed-vs-peers"
    workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for label in models:
        results[label] = benchmark_model(MODELS[label], args, workdir)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(render(meta, results))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
