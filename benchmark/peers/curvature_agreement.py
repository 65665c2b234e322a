"""Our ``kfac`` and ``ekfac`` against kronfluence's K-FAC and EK-FAC on the same model: agreement, time, peak memory.

    python -m benchmark.peers.curvature_agreement [--models iris,small-cnn,lenet] [--data-dir DIR]
                                                  [--output leaderboards/agreement.md]

Needs kronfluence 1.0.1 in **its own environment** (``pip install -e . kronfluence==1.0.1`` in a fresh venv), not in
the one that runs this repository's tests: its wheel installs a top-level ``tests`` package, which shadows this
repository's ``tests`` (a namespace package) and breaks ``pytest`` here.

Both libraries approximate the same matrix with the same damping: the **empirical Fisher** (observed labels:
kronfluence's ``use_empirical_fisher=True``, our ``fisher: empirical``), so the comparison is deterministic, and
``(K + (0.01 + weight_decay) I)^-1`` in the factors' eigenbasis (kronfluence's ``damping_factor``, our ``damping``
plus the problem's weight decay, both exact damping). Factors and scores in float64 on Iris, in the model's float32
on MNIST, as each library does by default there. Scores: kronfluence's pairwise score of query ``q`` and training
example ``i`` is ``g_q^T P g_i`` with per-example gradients of the summed loss; ours, the change of the test loss when
``i`` is removed, is ``(1/n) g_q^T P g_i`` (``benchmark.Estimator.influence``), so ours is theirs over ``n`` (the
table gives the median ratio of theirs to ``n`` times ours, 1 when the matrices agree in scale).

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

STRATEGIES = ("kfac", "ekfac")
BATCH = 512
"""Training examples per batch for both libraries' factor passes."""


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


def our_scores(strategy: str, problem: Any, test: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Our ``[m, n]`` influence of the test points, and per layer the trace of our K-FAC block."""
    ours = estimator(strategy, damping=DAMPING, fisher="empirical", batch_size=BATCH)
    ours.prepare(problem)
    scores = ours.influence(test)
    return scores, dict(ours.diagnostics["trace"]) if strategy == "kfac" else {}


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


def compare(model: str, data_dir: str | None) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    importlib.import_module("curvlinops")  # neither library's import is part of its time
    importlib.import_module("kronfluence.analyzer")
    _, problem = build_problem(MODELS[model], data_dir)
    test = test_points(problem)
    rows = []
    for strategy in STRATEGIES:
        for warm_up in (our_scores, kronfluence_scores):  # first calls pay for lazy imports and allocator growth
            warm_up(strategy, problem, test)
        (ours, our_traces), our_seconds, our_peak = measure(our_scores, strategy, problem, test)
        (theirs, their_traces), their_seconds, their_peak = measure(kronfluence_scores, strategy, problem, test)
        correlation = pearson_rows(ours.double(), theirs.double())
        ratio = float((theirs.double() / (problem.n_train * ours.double())).median())
        trace_ratios = {
            layer: our_traces[layer] / their_traces[name]
            for layer in our_traces
            for name in their_traces
            if name == layer or name.endswith("." + layer)
        }
        rows.append(
            {
                "model": model,
                "n_train": problem.n_train,
                "n_params": problem.n_params,
                "method": strategy,
                "pearson": float(correlation.min()),
                "ratio": ratio,
                "ours": (our_seconds, our_peak),
                "theirs": (their_seconds, their_peak),
                "trace_ratios": trace_ratios,
            }
        )
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
    def cost(pair: tuple[float, float | None]) -> list[str]:
        seconds, peak = pair
        return [f"{seconds:.2f}", "n/a" if peak is None else f"{peak:.0f}"]

    table = [
        [
            row["model"],
            f"{row['n_train']:,} / {row['n_params']:,}",
            f"`{row['method']}`",
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
        "ours",
        "Pearson (worst of 10)",
        "theirs / (n x ours), median",
        "ours s",
        "ours +peak MiB",
        "kronfluence s",
        "kronfluence +peak MiB",
        "K-FAC block trace, ours / theirs, by layer",
    ]
    lines = [
        "<!-- generated by `python -m benchmark.peers.curvature_agreement`, do not edit -->",
        "",
        "# K-FAC and EK-FAC: ours against kronfluence",
        "",
        "Both on the same trained model, training set and 10 highest-loss test points, the empirical Fisher, damping "
        f"{DAMPING} plus the model's weight decay (exact damping in the eigenbasis); time and the rise of the peak "
        "resident memory over the resident size before (+peak) from the model to the 10 x n scores, one torch thread, "
        "in one process, after one untimed run of each. Conventions and why K-FAC differs on "
        "convolutions: `benchmark/peers/curvature_agreement.py`.",
        f"{meta['device']}; {meta['versions']}; commit {meta['commit']}, {meta['date']}. Command: `{meta['command']}`.",
        "",
        markdown.table(header, table),
    ]
    return "\n".join(lines) + "\n"


def environment(argv: list[str]) -> dict[str, str]:
    versions = []
    for package in ("torch", "curvlinops-for-pytorch", "kronfluence"):
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
        "command": " ".join(["python -m benchmark.peers.curvature_agreement", *argv]),
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
    parser.add_argument("--output", default=str(REPO / "leaderboards" / "agreement.md"))
    args = parser.parse_args(argv)
    models = [name for name in args.models.split(",") if name]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choices: {', '.join(MODELS)})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        rows = [row for model in models for row in compare(model, args.data_dir)]
    Path(args.output).write_text(render(rows, environment(argv)))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
