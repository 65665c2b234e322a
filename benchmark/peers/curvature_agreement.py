"""Our ``kfac``, ``ekfac``, ``arnoldi`` and ``datainf`` against the libraries that define them, on the same model:
kronfluence's K-FAC and EK-FAC, dattri's ``IFAttributorArnoldi`` and ``IFAttributorDataInf``. Agreement, time, memory.

    python -m benchmark.peers.curvature_agreement [--models iris,small-cnn,lenet] [--data-dir DIR]
                                                  [--output leaderboards/agreement.md]

Needs kronfluence 1.0.1 and dattri 0.3.0 in **their own environment** (``pip install -e . kronfluence==1.0.1
dattri==0.3.0`` in a fresh venv), not in the one that runs this repository's tests: kronfluence's wheel installs a
top-level ``tests`` package (dattri's: ``test``, ``examples``, ``docs``, ``experiments``), which shadows this
repository's ``tests`` (a namespace package) and breaks ``pytest`` here.

Each pair approximates the same matrix with the same damping ``lambda = 0.01`` on top of the model's weight decay:

* ``kfac``, ``ekfac`` against kronfluence: the **empirical Fisher** (observed labels: kronfluence's
  ``use_empirical_fisher=True``, our ``fisher: empirical``), so the comparison is deterministic; ``(K + lambda I)^-1``
  in the factors' eigenbasis (kronfluence's ``damping_factor``, our ``damping`` plus the weight decay, both exact);
  factors in the model's dtype.
* ``arnoldi`` against dattri: the Hessian of the mean training loss plus ``lambda I`` (dattri's ``regularization``),
  the top 20 eigenpairs from 40 Hessian-vector products (:data:`RANK` says why so few; dattri's ``max_iter`` counts
  the start vector, so one more), each from its own random start; dattri orthogonalises once per step and in
  float32, ours twice.
* dattri's comparisons run in float32 on every model (on Iris, a float32 copy of the float64 optimum): dattri draws
  its Arnoldi vectors and DataInf accumulators in float32, which meet a float64 model with a dtype error. They use
  the first :data:`DATTRI_TRAIN` training examples (both sides: the same problem, with the Hessian and the Fisher of
  that subset), since dattri's Arnoldi and DataInf outgrow this machine's memory on the MNIST models' 5,500.
* ``datainf`` against dattri: one block per module (``blocks: module``, dattri's grouping) and one absolute
  ``lambda`` for every block (``fixed_damping``, dattri's ``regularization``).

Scores: ours, the change of the test loss when ``i`` is removed, is ``(1/n) g_q^T P g_i``
(``benchmark.Estimator.influence``); kronfluence's pairwise score is ``g_q^T P g_i`` (``[m, n]``), dattri's
``attribute`` ``g_i^T P g_q`` (``[n, m]``), both with per-example gradients, so ours is theirs over ``n`` (transposed
for dattri). The table gives the median ratio of theirs to ``n`` times ours, 1 when the matrices agree in scale.

Agreement is the Pearson correlation over the training points per test point, the worst of the 10 highest-loss test
points; the time covers building the factors (and, for EK-FAC, the eigenvalue correction) and scoring the 10 test
points against every training example, in this process with one torch thread; the memory is how far the process's
peak resident set size (``VmHWM``, reset before) rose above its resident size before. Where K-FAC disagrees, the
table gives per layer the ratio of the trace of our factored block ``tr(A) tr(G)`` to kronfluence's: on a
convolution, kronfluence averages both factors over the ``S`` output positions, curvlinops (whose K-FAC ours is)
sums the gradient factor over them (K-FAC-expand, Eschenhagen et al. 2023), so kronfluence's block is ``S`` times
smaller and its damping relatively ``S`` times larger. EK-FAC does not inherit this: its eigenvalues come from the
per-example gradients in both.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.common import markdown
from benchmark.peers.speed_vs_peers import (
    DAMPING,
    MODELS,
    REPO,
    build_problem,
    current_commit,
    estimator,
    pearson_rows,
    reset_peak,
    rss_mib,
    test_points,
)

METHODS = ("kfac", "ekfac", "arnoldi", "datainf")
PEERS = {"kfac": "kronfluence", "ekfac": "kronfluence", "arnoldi": "dattri", "datainf": "dattri"}
BATCH = 512
"""Training examples per batch for both libraries' factor passes."""
DATTRI_TRAIN = 500
"""Training examples of the problems dattri is compared on (the first ones). dattri's DataInf ``attribute`` grows in
memory about with the square of the training set (measured on the small CNN: 0.96 GB resident at 200 examples,
1.30 GB at 400, past this machine's 24 GB at 5,500), and its Arnoldi keeps a full-data product graph per step."""
RANK, ITERATIONS = 20, 40
"""Arnoldi's kept eigenpairs and curvature-vector products. Small, for two measured reasons: dattri's iteration keeps
every step's product graph (140 MB more resident memory per step on the small CNN with 500 training examples), and
on Iris (43 parameters) a full-rank run keeps spurious negative Ritz values of its float32 iteration, whose square
roots its projection divides by (NaN)."""


def kronfluence_scores(strategy: str, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, float]]:
    """kronfluence's ``[m, n]`` pairwise scores of the test points ``test``, and per factored module the trace of
    its K-FAC block ``tr(A) tr(G)`` (for the K-FAC explanation)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class SummedCrossEntropy(Task):  # type: ignore[misc]
        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(model(x), y, reduction="sum")

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> Tensor:
            return self.compute_train_loss(batch, model)

    dtype = problem.dtype
    task = SummedCrossEntropy()
    model = prepare_model(problem.network_at().module.eval(), task)
    train = TensorDataset(problem.x_train, problem.y_train)
    with tempfile.TemporaryDirectory() as workdir:
        analyzer = Analyzer(
            "agreement", model, task, output_dir=workdir, disable_model_save=True, cpu=True, disable_tqdm=True
        )
        analyzer.fit_all_factors(
            "factors",
            train,
            per_device_batch_size=BATCH,
            factor_args=FactorArguments(
                strategy=strategy,
                use_empirical_fisher=True,
                activation_covariance_dtype=dtype,
                gradient_covariance_dtype=dtype,
                lambda_dtype=dtype,
            ),
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            "scores",
            "factors",
            TensorDataset(problem.x_test[test], problem.y_test[test]),
            train,
            per_device_query_batch_size=len(test),
            per_device_train_batch_size=BATCH,
            score_args=ScoreArguments(
                damping_factor=DAMPING + problem.weight_decay,
                precondition_dtype=dtype,
                per_sample_gradient_dtype=dtype,
                score_dtype=dtype,
            ),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
        factors = analyzer.load_all_factors("factors")
    traces = {}
    if strategy == "kfac":
        for name, values in factors["activation_eigenvalues"].items():
            traces[name] = float(values.double().sum() * factors["gradient_eigenvalues"][name].double().sum())
    return scores, traces


def dattri_scores(method: str, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, float]]:
    """dattri's scores of the test points in its ``[n, m]`` layout (no factor traces)."""
    from dattri.algorithm.influence_function import IFAttributorArnoldi, IFAttributorDataInf
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    from benchmark.numerics.losses import cross_entropy

    module = problem.network_at().module.eval()

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return cross_entropy(torch.func.functional_call(module, params, (x,)), y).mean()

    task = AttributionTask(loss_func=loss_func, model=module, checkpoints=module.state_dict())
    regularization = DAMPING + problem.weight_decay  # the weight decay's Hessian is weight_decay * I
    # dattri's Arnoldi joins the batches into one for its products and its DataInf caches per-example gradients batch
    # by batch, so batches bound only the per-example gradients' memory
    train = DataLoader(TensorDataset(problem.x_train, problem.y_train), batch_size=BATCH, shuffle=False)
    tests = DataLoader(TensorDataset(problem.x_test[test], problem.y_test[test]), batch_size=len(test), shuffle=False)
    if method == "arnoldi":
        attributor: Any = IFAttributorArnoldi(
            task=task, device="cpu", proj_dim=RANK, max_iter=ITERATIONS + 1, regularization=regularization
        )
    else:
        attributor = IFAttributorDataInf(task=task, device="cpu", regularization=regularization)
    attributor.cache(train)
    return attributor.attribute(train, tests), {}


def peer_scores(method: str, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The defining library's scores in our ``[m, n]`` layout and scale, and (K-FAC) its per-module block traces."""
    if PEERS[method] == "kronfluence":
        scores, traces = kronfluence_scores(method, problem, test)
        return scores / problem.n_train, traces
    scores, traces = dattri_scores(method, problem, test)
    return scores.T / problem.n_train, traces


def our_scores(method: str, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Our ``[m, n]`` influence of the test points, and per layer the trace of our K-FAC block."""
    options: dict[str, Any] = {
        "kfac": {"damping": DAMPING, "fisher": "empirical", "batch_size": BATCH},
        "arnoldi": {"damping": DAMPING, "rank": RANK, "iterations": ITERATIONS},
        "datainf": {"blocks": "module", "fixed_damping": DAMPING},
    }
    ours = estimator(method, **options["kfac" if method == "ekfac" else method])
    ours.prepare(problem)
    scores = ours.influence(test)
    return scores, dict(ours.diagnostics["trace"]) if method == "kfac" else {}


def measure(function: Any, *args: Any) -> tuple[Any, float, float | None]:
    """``function(*args)``, its wall time and how far the process's peak resident set size during it rose above its
    resident size before it (MiB)."""
    reset = reset_peak()
    before = rss_mib("VmRSS")
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    return result, seconds, peak - before if reset and peak is not None and before is not None else None


def compare(model: str, data_dir: str | None, methods: tuple[str, ...] = METHODS) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    _, problem = build_problem(MODELS[model], data_dir)
    test = test_points(problem)
    rows = []
    for method in methods:
        setting = problem
        if PEERS[method] == "dattri":
            # it draws its vectors and accumulators in float32, which meet a float64 model with a dtype error
            setting = problem.to(torch.float32)
            setting = dataclasses.replace(
                setting, x_train=setting.x_train[:DATTRI_TRAIN], y_train=setting.y_train[:DATTRI_TRAIN]
            )
        for warm_up in (our_scores, peer_scores):  # first calls pay for lazy imports and allocator growth
            warm_up(method, setting, test)
        (ours, our_traces), our_seconds, our_peak = measure(our_scores, method, setting, test)
        (theirs, their_traces), their_seconds, their_peak = measure(peer_scores, method, setting, test)
        correlation = pearson_rows(ours.double(), theirs.double())
        ratio = float((theirs.double() / ours.double()).median().detach())
        trace_ratios = {
            layer: our_traces[layer] / their_traces[name]
            for layer in our_traces
            for name in their_traces
            if name == layer or name.endswith("." + layer)
        }
        rows.append(
            {
                "model": model,
                "n_train": setting.n_train,
                "n_params": setting.n_params,
                "dtype": str(setting.dtype).removeprefix("torch."),
                "method": method,
                "peer": PEERS[method],
                "pearson": float(correlation.min().detach()),
                "ratio": ratio,
                "ours": (our_seconds, our_peak),
                "theirs": (their_seconds, their_peak),
                "trace_ratios": trace_ratios,
            }
        )
    return rows


def cost(pair: tuple[float, float | None]) -> list[str]:
    """A measurement's table cells: seconds and the peak memory's rise in MiB (``n/a`` where not measurable)."""
    seconds, peak = pair
    return [f"{seconds:.2f}", "n/a" if peak is None else f"{peak:.0f}"]


def render(rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
    table = [
        [
            row["model"],
            f"{row['n_train']:,} / {row['n_params']:,}",
            row["dtype"],
            f"`{row['method']}`",
            row["peer"],
            f"{row['pearson']:.6f}",
            f"{row['ratio']:.4f}",
            *cost(row["ours"]),
            *cost(row["theirs"]),
            ", ".join(f"{layer} {value:.4g}" for layer, value in row["trace_ratios"].items()) or "-",
        ]
        for row in rows
    ]
    header = [
        "model",
        "n train / params",
        "dtype",
        "ours",
        "against",
        "Pearson (worst of 10)",
        "theirs / ours, median (aligned)",
        "ours s",
        "ours +peak MiB",
        "theirs s",
        "theirs +peak MiB",
        "K-FAC block trace, ours / theirs, by layer",
    ]
    lines = [
        "<!-- generated by `python -m benchmark.peers.curvature_agreement`, do not edit -->",
        "",
        "# Curvature estimators: ours against the libraries that define them",
        "",
        "K-FAC and EK-FAC against kronfluence, Arnoldi and DataInf against dattri: both sides on the same trained "
        f"model, training set and 10 highest-loss test points, damping {DAMPING} plus the model's weight decay, the "
        "settings aligned as the module docstring states; time and the rise of the peak "
        "resident memory over the resident size before (+peak) from the model to the 10 x n scores, one torch thread, "
        "in one process, after one untimed run of each. Conventions, and why K-FAC differs on "
        "convolutions: `benchmark/peers/curvature_agreement.py`.",
        f"{meta['device']}; {meta['versions']}; commit {meta['commit']}, {meta['date']}. Command: `{meta['command']}`.",
        "",
        markdown.table(header, table),
    ]
    return "\n".join(lines) + "\n"


def environment(
    argv: list[str],
    module: str = "benchmark.peers.curvature_agreement",
    packages: tuple[str, ...] = ("torch", "curvlinops-for-pytorch", "kronfluence", "dattri"),
) -> dict[str, str]:
    """What a comparison table's banner states: the command (``python -m module`` with ``argv``), the CPU, the
    versions of ``packages``, the commit and the date."""
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    processor = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "CPU",
    )
    return {
        "command": " ".join([f"python -m {module}", *argv]),
        "device": f"CPU ({processor})",
        "versions": ", ".join(versions),
        "commit": current_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmark.peers.curvature_agreement", description=__doc__)
    parser.add_argument("--models", default="iris,small-cnn,lenet", help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--data-dir", default=None, help="MNIST in torchvision's layout (default $BENCH_DATA_DIR)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    parser.add_argument("--output", default=str(REPO / "leaderboards" / "agreement.md"))
    args = parser.parse_args(argv)
    models = [name for name in args.models.split(",") if name]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choices: {', '.join(MODELS)})")
    methods = tuple(name for name in args.methods.split(",") if name)
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r} (choices: {', '.join(METHODS)})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        rows = [row for model in models for row in compare(model, args.data_dir, methods)]
    Path(args.output).write_text(render(rows, environment(argv)))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
