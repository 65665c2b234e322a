"""The building blocks of a fast iHVP, measured one against another on small MNIST (issue 8).

    python -m benchmark.peers.speed_blocks [--models lenet,small-cnn] [--data-dir /tmp/benchdata] [--vectors 10]
                                           [--compile-timeout 300] [--output leaderboards/speed-blocks.md]

On each model's trained optimum (task ``mnist``, ``cpu`` preset: 5,500 training images; from the cache), one torch
thread:

* Hessian-vector products over the full training set: the kept double-backward graph as ``Problem.hvp`` keeps it
  (built once, one backward pass per vector, its convolutions of the data replaced by
  ``benchmark.numerics.data_convolution``, in pieces of ``Problem.PASS_BYTES`` on the CPU) against the same graph in one
  piece, the one piece through torch's own convolutions and forward-over-reverse (``jvp`` of ``grad``), for one
  vector, for ``--vectors`` vectors one by one and for all of them at once (``vmap`` over vectors for ``jvp``;
  ``is_grads_batched`` for the kept graph);
* the training-side influence of every training point along ``--vectors`` vectors: ``Problem.train_gradient_products``
  against one forward-mode ``jvp`` pass per vector over the whole set, the same in passes of ``Problem.PASS_BYTES``,
  and per-example gradients (``vmap(grad)``) in chunks of 500 and a matrix product;
* for scale, one gradient of the objective (forward and backward pass) over the full training set;
* ``torch.compile`` of the forward-over-reverse product (in a subprocess with a timeout; a failure is reported).

Every variant's output is checked against ``Problem.hvp`` (or ``Problem.train_gradient_products``) before its time
is reported. Each time is the best of ``--repeats`` calls after one warm-up call; the kernel's share of it (system
CPU time, mostly page faults of freshly mapped memory) is shown beside it, and so are the floating-point operations
of one call (``torch.utils.flop_counter``: convolutions and matrix products, the bulk of the work) and their rate,
against the rate of a large one-thread matrix product, the practical ceiling of this CPU core. Operations are
counted only where no ``vmap`` batches the convolutions (:attr:`Variant.under_vmap`; those rows show no GFLOP
figure): ``vmap`` turns them into grouped convolutions, whose weight gradient torch's counter (torch 2.14) counts as
if ungrouped, ``groups`` times too many.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap
from torch.utils.flop_counter import FlopCounterMode

from benchmark.common import markdown
from benchmark.numerics.data_convolution import data_convolutions
from benchmark.peers.speed_vs_peers import MODELS, REPO, build_problem, current_commit

MODULE = "benchmark.peers.speed_blocks"
"""This module's import name: the ``torch.compile`` child runs as ``python -m MODULE --compiled-child``."""


def best_time(fn: Callable[[], Tensor], repeats: int) -> tuple[float, float, Tensor]:
    """Best wall time of ``repeats`` calls after one warm-up call, the system CPU time of that call, and the last
    output."""
    out = fn()
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        best = min(best, (seconds, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before))
    return best[0], best[1], out


def counted_flops(fn: Callable[[], Tensor]) -> int:
    """The floating-point operations of one call of ``fn`` that ``torch.utils.flop_counter`` counts."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of a ``size``-square float32 matrix product on the current threads: the core's practical ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds, _, _ = best_time(lambda: a @ b, repeats)
    return 2 * size**3 / seconds / 1e9


def hvp_function(problem: Any) -> Callable[[Tensor], Tensor]:
    """``v -> H v`` forward-over-reverse on the full training set (no chunks)."""
    gradient = grad(lambda theta: problem.objective(theta))
    return lambda v: jvp(gradient, (problem.theta,), (v,))[1]


def compiled_child(args: argparse.Namespace) -> None:
    """In a subprocess: time ``torch.compile`` of the forward-over-reverse product; print one ``RESULT`` line."""
    torch.set_num_threads(1)
    _, problem = build_problem(MODELS[args.models], args.data_dir)
    vector = torch.randn(problem.n_params, generator=torch.Generator().manual_seed(0))
    plain = hvp_function(problem)
    reference = plain(vector)
    compiled = torch.compile(plain)
    start = time.perf_counter()
    out = compiled(vector)
    first = time.perf_counter() - start
    seconds, _, out = best_time(lambda: compiled(vector), args.repeats)
    plain_seconds, _, _ = best_time(lambda: plain(vector), args.repeats)
    error = float(torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference))
    print("RESULT " + json.dumps({"first": first, "seconds": seconds, "plain": plain_seconds, "error": error}))


def kept_graph(problem: Any, native: bool = False) -> tuple[Tensor, Tensor]:
    """The gradient's graph over the whole training set in one piece: through the data convolutions of
    ``Problem.hvp`` or, with ``native``, through torch's own convolutions."""
    with torch.enable_grad(), contextlib.nullcontext() if native else data_convolutions():
        theta = problem.theta.detach().requires_grad_()
        return theta, torch.autograd.grad(problem.objective(theta), theta, create_graph=True)[0]


Timed = tuple[float, float, Tensor, "int | None"]
"""Best wall time, system CPU time, output and counted operations (``None``: not counted) of one variant."""


def table_row(block: str, variant: str, timed: Timed, reference: Tensor, per: int) -> list[str]:
    """A row of the table: ``timed`` checked against ``reference`` (a relative error over 1e-3 stops the script),
    per vector over ``per`` vectors, with blank GFLOP cells where the operations were not counted."""
    seconds, kernel, out, flops = timed
    error = float(torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference))
    if error > 1e-3:
        raise SystemExit(f"{variant} disagrees with the reference (relative error {error:.2g})")
    counts = ["", ""] if flops is None else [f"{flops / per / 1e9:.1f}", f"{flops / seconds / 1e9:.0f}"]
    return [block, variant, f"{seconds:.2f}", f"{seconds / per:.2f}", f"{kernel:.2f}", *counts, f"{error:.1e}"]


def measure(model: str, args: argparse.Namespace) -> tuple[Any, list[list[str]], str]:
    """The rows of one model's table, and what ``torch.compile`` did."""
    _, problem = build_problem(MODELS[model], args.data_dir)
    problem.curvature_cache = None
    vectors = torch.randn(args.vectors, problem.n_params, generator=torch.Generator().manual_seed(0))
    rows = block_rows(problem, vectors, args.repeats, label=model)
    return problem, rows, compile_sentence(model, args)


def block_rows(problem: Any, vectors: Tensor, repeats: int, label: str = "") -> list[list[str]]:
    """The rows of one problem's table: every variant along ``vectors``, timed (best of ``repeats``), checked and,
    where no ``vmap`` runs inside it (``under_vmap=False``), its operations counted."""
    m = len(vectors)
    plain = hvp_function(problem)
    rows: list[list[str]] = []

    def record(block: str, variant: str, timed: Timed, reference: Tensor, per: int) -> Tensor:
        rows.append(table_row(block, variant, timed, reference, per))
        print(label, rows[-1], flush=True)
        return timed[2]

    def timed(fn: Callable[[], Tensor], under_vmap: bool = False) -> Timed:
        """Best time, kernel time and output of ``fn``, and its operations unless ``under_vmap``."""
        return *best_time(fn, repeats), None if under_vmap else counted_flops(fn)

    # Hessian-vector products: the reference is Problem.hvp, one vector at a time
    pieces = timed(lambda: problem.hvp(vectors[:1]))
    one = pieces[2]
    record("HVP, 1 vector", f"kept graph in {len(problem._gradient_graph)} pieces (Problem.hvp)", pieces, one, 1)
    for native, variant in (
        (False, "kept graph in one piece"),
        (True, "kept graph in one piece, torch's own convolution double backward"),
    ):
        theta, gradient = kept_graph(problem, native)

        def whole(theta: Tensor = theta, gradient: Tensor = gradient) -> Tensor:
            with torch.enable_grad():
                return torch.autograd.grad(gradient, theta, vectors[0], retain_graph=True)[0][None]

        record("HVP, 1 vector", variant, timed(whole), one, 1)
        del theta, gradient, whole
    record("HVP, 1 vector", "forward-over-reverse (jvp of grad)", timed(lambda: plain(vectors[0])[None]), one, 1)

    def gradient() -> Tensor:
        with torch.enable_grad(), data_convolutions():
            theta = problem.theta.detach().requires_grad_()
            return torch.autograd.grad(problem.objective(theta), theta)[0][None]

    # for scale: what one gradient costs beside a product
    record(
        "gradient, for scale",
        "forward and backward (reverse mode)",
        timed(gradient),
        grad(problem.objective)(problem.theta)[None],
        1,
    )
    every = timed(lambda: problem.hvp(vectors))
    every = record(f"HVP, {m} vectors", "kept graph in pieces, one by one (Problem.hvp)", every, every[2], m)

    def kept_batched() -> Tensor:
        total = problem.weight_decay * vectors
        with torch.enable_grad():
            for theta, gradient in problem._gradient_graph:
                total = (
                    total + torch.autograd.grad(gradient, theta, vectors, retain_graph=True, is_grads_batched=True)[0]
                )
        return total

    record(
        f"HVP, {m} vectors",
        "kept graph in pieces, batched (is_grads_batched)",
        timed(kept_batched, under_vmap=True),
        every,
        m,
    )
    block = f"HVP, {m} vectors"
    record(block, "forward-over-reverse, one by one", timed(lambda: torch.stack([plain(v) for v in vectors])), every, m)
    record(
        block, "forward-over-reverse, vmap over vectors", timed(lambda: vmap(plain)(vectors), under_vmap=True), every, m
    )

    # training side: every training point's product with each vector
    block = f"training side, {m} vectors"
    products = timed(lambda: problem.train_gradient_products(vectors), under_vmap=True)  # per-example: vmap
    products = record(block, "Problem.train_gradient_products", products, products[2], m)

    def forward_mode(rows: int) -> Tensor:
        out = vectors.new_empty(m, problem.n_train)
        for part in problem.train_slices(rows):
            x, y = problem.x_train[part], problem.y_train[part]
            out[:, part] = vmap(lambda v: jvp(lambda t: problem.losses(t, x, y), (problem.theta,), (v,))[1])(vectors)
        return out

    passes = problem._pass_rows(m * problem._graph_bytes_per_example())
    record(
        block,
        "jvp per vector, whole set at once",
        timed(lambda: forward_mode(problem.n_train), under_vmap=True),
        products,
        m,
    )
    record(
        block,
        f"jvp per vector, passes of {passes} examples (Problem.PASS_BYTES)",
        timed(lambda: forward_mode(passes), under_vmap=True),
        products,
        m,
    )
    record(
        block,
        "per-example gradients (vmap(grad), chunks of 500) @ vectors",
        timed(
            lambda: torch.cat([chunk @ vectors.T for _, chunk in problem.iter_train_gradients(500)]).T, under_vmap=True
        ),
        products,
        m,
    )
    return rows


def compile_sentence(model: str, args: argparse.Namespace) -> str:
    """What ``torch.compile`` of the forward-over-reverse product does on ``model``, from a subprocess with a timeout
    (compiling may fail or hang)."""
    command = [sys.executable, "-m", MODULE, "--compiled-child", "--models", model, "--repeats", str(args.repeats)] + (
        ["--data-dir", args.data_dir] if args.data_dir else []
    )
    try:
        done = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=args.compile_timeout,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            info = json.loads(lines[-1][7:])
            compiled = (
                f"compiled forward-over-reverse HVP {info['seconds']:.2f} s per vector against "
                f"{info['plain']:.2f} s uncompiled (first call, compiling: {info['first']:.1f} s; relative "
                f"difference {info['error']:.1e})"
            )
        else:
            tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            compiled = f"torch.compile failed: {tail[:200]}"
    except subprocess.TimeoutExpired:
        compiled = f"torch.compile did not finish within {args.compile_timeout:.0f} s (compiling and timing)"
    print(compiled, flush=True)
    return compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="lenet,small-cnn",
        help="comma-separated, from: " + ", ".join(m for m in MODELS if m != "iris"),
    )
    parser.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR"))
    parser.add_argument("--vectors", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compile-timeout", type=float, default=300.0)
    parser.add_argument("--output", type=Path, default=REPO / "leaderboards" / "speed-blocks.md")
    parser.add_argument("--compiled-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compiled_child:
        compiled_child(args)
        return
    models = args.models.split(",")
    for model in models:
        if model not in MODELS or model == "iris":
            parser.error(f"unknown model {model!r}; choose from {', '.join(m for m in MODELS if m != 'iris')}")
    torch.set_num_threads(1)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())

    from importlib.metadata import version

    text = [
        "# Building blocks of a fast iHVP",
        "",
        f"<!-- generated by `python -m {MODULE}`, do not edit -->",
        f"Generated by `python -m {MODULE} {' '.join(sys.argv[1:])}`; do not edit.",
        "",
        f"5,500 MNIST training images (task `mnist`, preset `cpu`), float32, one torch thread, best of {args.repeats} "
        f"after a warm-up call; kernel: the system CPU time of that call (page faults of freshly mapped memory). "
        f"Device: CPU, {os.cpu_count()} cores, {platform.system()}, load average at the start {load} (the machine is "
        f"shared). torch {version('torch')}. Commit: {current_commit()}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        f"A 2048 x 2048 float32 matrix product on this thread runs at {matmul_rate():.0f} GFLOP/s, the practical "
        "ceiling of the GFLOP/s column (which counts the convolutions' and matrix products' operations).",
    ]
    for model in models:
        problem, rows, compiled = measure(model, args)
        text += [
            "",
            f"## {model} ({problem.n_params:,} parameters)",
            "",
            markdown.table(
                [
                    "block",
                    "variant",
                    "time (s)",
                    "per vector (s)",
                    "kernel (s)",
                    "GFLOP per vector",
                    "GFLOP/s",
                    "rel. error",
                ],
                rows,
            ),
            "",
            f"torch.compile: {compiled}.",
        ]
        del problem
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(text) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
