"""The building blocks of a fast iHVP, measured one against another on small MNIST (issue 8).

    python scripts/speed_blocks.py [--model lenet] [--data-dir /tmp/benchdata] [--vectors 10] [--compile-timeout 300]
                                   [--output leaderboards/speed-blocks.md]

On the task's trained optimum (``mnist``, ``cpu`` preset: 5,500 training images; from the cache), one torch thread:

* Hessian-vector products over the full training set: the kept double-backward graph (``Problem.hvp``: the
  gradient's graph built once, one backward pass per vector, its convolutions of the data replaced by
  ``benchmark.data_convolution``) against the same graph through torch's own convolutions and forward-over-reverse
  (``jvp`` of ``grad``),
  for one vector, for ``--vectors`` vectors one by one and for all of them at once (``vmap`` over vectors for
  ``jvp``; ``is_grads_batched`` for the kept graph);
* the training-side influence of every training point along ``--vectors`` vectors: one forward-mode ``jvp`` pass
  per vector (``Problem.train_gradient_products``) against per-example gradients (``vmap(grad)`` in chunks of 500)
  and a matrix product;
* ``torch.compile`` of the forward-over-reverse product (in a subprocess with a timeout; a failure is reported).

Every variant's output is checked against the kept-graph product (or the jvp products) before its time is reported.
Each time is the best of ``--repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from speed_vs_peers import MODELS, build_problem, current_commit, markdown_table  # noqa: E402


def best_time(fn: Callable[[], Tensor], repeats: int) -> tuple[float, Tensor]:
    """Best wall time of ``repeats`` calls after one warm-up call, and the last output."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def hvp_function(problem: Any) -> Callable[[Tensor], Tensor]:
    """``v -> H v`` forward-over-reverse on the full training set (no chunks)."""
    gradient = grad(lambda theta: problem.objective(theta))
    return lambda v: jvp(gradient, (problem.theta,), (v,))[1]


def compiled_child(args: argparse.Namespace) -> None:
    """In a subprocess: time ``torch.compile`` of the forward-over-reverse product; print one ``RESULT`` line."""
    torch.set_num_threads(1)
    _, problem = build_problem(MODELS[args.model], args.data_dir)
    vector = torch.randn(problem.n_params, generator=torch.Generator().manual_seed(0))
    plain = hvp_function(problem)
    reference = plain(vector)
    compiled = torch.compile(plain)
    start = time.perf_counter()
    out = compiled(vector)
    first = time.perf_counter() - start
    seconds, out = best_time(lambda: compiled(vector), args.repeats)
    plain_seconds, _ = best_time(lambda: plain(vector), args.repeats)
    error = float(torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference))
    print("RESULT " + json.dumps({"first": first, "seconds": seconds, "plain": plain_seconds, "error": error}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet", choices=[m for m in MODELS if m != "iris"])
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
    torch.set_num_threads(1)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    _, problem = build_problem(MODELS[args.model], args.data_dir)
    m = args.vectors
    vectors = torch.randn(m, problem.n_params, generator=torch.Generator().manual_seed(0))
    plain = hvp_function(problem)
    rows: list[list[str]] = []

    def record(block: str, variant: str, seconds: float, out: Tensor, reference: Tensor, per: int) -> None:
        error = float((torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference)))
        if error > 1e-3:
            raise SystemExit(f"{variant} disagrees with the reference (relative error {error:.2g})")
        rows.append([block, variant, f"{seconds:.2f}", f"{seconds / per:.2f}", f"{error:.1e}"])
        print(rows[-1], flush=True)

    # Hessian-vector products: the reference is the kept graph, one vector at a time
    seconds, kept_one = best_time(lambda: problem.hvp(vectors[:1]), args.repeats)
    record("HVP, 1 vector", "kept double-backward graph (Problem.hvp)", seconds, kept_one, kept_one, 1)
    with torch.enable_grad():  # the same graph through torch's own convolutions (no data_convolutions)
        native_theta = problem.theta.detach().requires_grad_()
        native = torch.autograd.grad(problem.objective(native_theta), native_theta, create_graph=True)[0]

    def kept_native() -> Tensor:
        with torch.enable_grad():
            return torch.autograd.grad(native, native_theta, vectors[0], retain_graph=True)[0][None]

    seconds, out = best_time(kept_native, args.repeats)
    record("HVP, 1 vector", "kept graph, torch's own convolution double backward", seconds, out, kept_one, 1)
    del native, native_theta
    seconds, out = best_time(lambda: plain(vectors[0])[None], args.repeats)
    record("HVP, 1 vector", "forward-over-reverse (jvp of grad)", seconds, out, kept_one, 1)
    seconds, kept_all = best_time(lambda: problem.hvp(vectors), args.repeats)
    record(f"HVP, {m} vectors", "kept graph, one by one (Problem.hvp)", seconds, kept_all, kept_all, m)
    theta, gradient = problem._gradient_graph

    def kept_batched() -> Tensor:
        with torch.enable_grad():
            return torch.autograd.grad(gradient, theta, vectors, retain_graph=True, is_grads_batched=True)[0]

    seconds, out = best_time(kept_batched, args.repeats)
    record(f"HVP, {m} vectors", "kept graph, batched (is_grads_batched)", seconds, out, kept_all, m)
    seconds, out = best_time(lambda: torch.stack([plain(v) for v in vectors]), args.repeats)
    record(f"HVP, {m} vectors", "forward-over-reverse, one by one", seconds, out, kept_all, m)
    seconds, out = best_time(lambda: vmap(plain)(vectors), args.repeats)
    record(f"HVP, {m} vectors", "forward-over-reverse, vmap over vectors", seconds, out, kept_all, m)

    # training side: every training point's product with each vector
    seconds, products = best_time(lambda: problem.train_gradient_products(vectors), args.repeats)
    record(f"training side, {m} vectors", "jvp per vector (Problem.train_gradient_products)", seconds, products,
           products, m)

    def per_example() -> Tensor:
        return torch.cat([chunk @ vectors.T for _, chunk in problem.iter_train_gradients(500)]).T

    seconds, out = best_time(per_example, args.repeats)
    record(f"training side, {m} vectors", "per-example gradients (vmap(grad), chunks of 500) @ vectors", seconds,
           out, products, m)

    # torch.compile, isolated: it may fail or hang
    command = [sys.executable, str(Path(__file__).resolve()), "--compiled-child", "--model", args.model,
               "--repeats", str(args.repeats)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.compile_timeout,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            info = json.loads(lines[-1][7:])
            compiled = (f"compiled forward-over-reverse HVP {info['seconds']:.2f} s per vector against "
                        f"{info['plain']:.2f} s uncompiled (first call, compiling: {info['first']:.1f} s; relative "
                        f"difference {info['error']:.1e})")
        else:
            tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            compiled = f"torch.compile failed: {tail[:200]}"
    except subprocess.TimeoutExpired:
        compiled = f"torch.compile did not finish within {args.compile_timeout:.0f} s (compiling and timing)"
    print(compiled, flush=True)

    from importlib.metadata import version

    text = [
        "# Building blocks of a fast iHVP",
        "",
        "<!-- generated by `python scripts/speed_blocks.py`, do not edit -->",
        f"Generated by `python scripts/speed_blocks.py {' '.join(sys.argv[1:])}`; do not edit.",
        "",
        f"Model: {args.model} ({problem.n_params:,} parameters) on {problem.n_train:,} MNIST training images (task "
        f"`mnist`, preset `cpu`), float32, one torch thread, best of {args.repeats} after a warm-up call. Device: "
        f"CPU, {os.cpu_count()} cores, {platform.system()}, load average at the start {load} (the machine is "
        f"shared). torch {version('torch')}. Commit: {current_commit()}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        markdown_table(["block", "variant", "time (s)", "per vector (s)", "rel. error"], rows),
        "",
        f"torch.compile: {compiled}.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(text))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
