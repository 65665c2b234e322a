"""What Table 1's small-network rows cost at the paper's data sizes on this machine, stage by stage.

    BENCH_DATA_DIR=DIR python scripts/paper_cost.py [CONFIG.yaml ...] [--steps 40] [--output FILE] [--preset P]

For each run config (default: every ``leaderboards/configs/*.yaml``, the committed ``cpu``-preset rows) switched to
the ``paper`` preset (the whole training and test sets and the paper's schedule), it times a sample of each stage
of ``bench run --config CONFIG --set TASK.preset=paper`` on this machine's CPU, one torch thread, and multiplies it
out: SGD steps of one model (the training schedule), one gradient of the full objective (an L-BFGS iteration takes
at least one), one Hessian-vector product over the whole training set (a CG iteration), a chunk of the dense
Hessian (``exact``, where the model is within its size limit), and leave-one-out re-training steps with models
stacked as the ground-truth engine stacks them. Configs that share a model and data are timed once. Nothing is
trained to the end and nothing is cached: the samples run on the untrained network, whose step costs the same.
Writes a Markdown table (default ``leaderboards/paper-cost.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch
from stationarity import config_task  # a sibling script: scripts/ is on the path when one runs

from benchmark.common import config as configuration
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.groundtruth.engine import fastest_chunk_size
from benchmark.numerics.recipes import Recipe
from benchmark.numerics.training import descend
from estimators.exact import ExactConfig
from tasks.vision import PRESETS

TOP_K_SEEDS = 2
"""Ground-truth seeds of a Table 1 row (the noise ceiling)."""
HESSIAN_BLOCK = 4
"""Basis vectors per timed block of the dense Hessian (``exact`` takes 64 at a time, which costs minutes a block at
the paper's sizes; a smaller block costs at least as much per vector, so the figure is an upper estimate)."""


def seconds(work, repeats: int = 3) -> float:
    """Median wall-clock seconds of ``work()`` over ``repeats`` calls after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        work()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def sample(task, steps: int) -> dict:
    """Per-unit seconds of each stage on ``task``'s untrained problem (seed 0)."""
    c = task.config
    problem = task.untrained(0)
    theta = problem.theta
    train = Recipe(steps=steps, lr=c.lr, batch_size=c.batch_size, momentum=c.momentum)
    one = torch.ones(1, problem.n_train, dtype=problem.dtype)
    sgd_step = seconds(lambda: descend(problem, theta.unsqueeze(0), one, train), repeats=1) / steps
    gradient = seconds(lambda: problem.objective_and_gradient(theta))
    vector = torch.randn(1, problem.n_params, dtype=problem.dtype, generator=torch.Generator().manual_seed(0))
    hvp = seconds(lambda: problem.hvp(vector), repeats=1)
    hessian = None
    if problem.n_params <= ExactConfig().max_params:
        block = torch.eye(problem.n_params, dtype=problem.dtype)[:HESSIAN_BLOCK]
        hessian = seconds(lambda: problem.hvp(block), repeats=1) * problem.n_params / HESSIAN_BLOCK
    retrain = task.protocol().retrain
    models = task.config.eval_size * TOP_K_SEEDS
    stacked = fastest_chunk_size(problem, retrain, models)
    weights = torch.ones(stacked, problem.n_train, dtype=problem.dtype)
    probe = dataclasses.replace(retrain, steps=steps)
    start = theta.unsqueeze(0).expand(stacked, -1)
    loo_step = seconds(lambda: descend(problem, start, weights, probe), repeats=1) / (steps * stacked)
    return {
        "n_train": problem.n_train,
        "n_params": problem.n_params,
        "sgd_step": sgd_step,
        "gradient": gradient,
        "hvp": hvp,
        "hessian": hessian,
        "stacked": stacked,
        "loo_step": loo_step,
        "retrain_steps": retrain.steps,
        "models": models,
    }


def hours(value: float) -> str:
    return f"{value / 3600:.1f} h" if value >= 3600 else f"{value / 60:.0f} min" if value >= 60 else f"{value:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--steps", type=int, default=40, help="SGD steps timed per sample (default 40)")
    parser.add_argument("--output", type=Path, default=Path("leaderboards") / "paper-cost.md")
    parser.add_argument(
        "--preset", default="paper", choices=tuple(PRESETS), help="the preset the configs switch to (default paper)"
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: expected a positive number of SGD steps")
    configs = args.configs or sorted(Path("leaderboards/configs").glob("*.yaml"))
    registry = Registry(plugin_manager())
    torch.set_num_threads(1)
    timed: dict[tuple, dict] = {}
    exact_limit = ExactConfig().max_params
    rows = []
    for path in configs:
        name = configuration.load_yaml(path)["task"]
        task = config_task(registry, path, [f"{name}.preset={args.preset}"])  # as `bench run --set TASK.preset=P`
        c = task.config
        shared = (task.name, c.model)
        if shared not in timed:
            print(f"== {path.name}: timing {task.name} {c.model} at the {args.preset} preset", flush=True)
            timed[shared] = sample(task, args.steps)
        s = timed[shared]
        schedule = c.train_steps + 2 * c.polish_steps
        training = s["sgd_step"] * schedule
        polish = s["gradient"] * c.lbfgs_steps
        loo = s["loo_step"] * s["retrain_steps"] * s["models"]
        exact = hours(s["hessian"]) if s["hessian"] is not None else f"skipped (over {exact_limit:,} parameters)"
        rows.append(
            f"| `{path.name}` | {task.name} | {c.model} | {c.weight_decay:g} | {s['n_train']:,} | {s['n_params']:,} | "
            f"{s['sgd_step'] * 1000:.1f} | {hours(training)} ({schedule:,} steps) | {s['gradient']:.2f} | "
            f"{hours(polish)} ({c.lbfgs_steps:,} iterations) | {s['hvp']:.2f} | {hours(100 * s['hvp'])} | {exact} | "
            f"{s['loo_step'] * 1000:.1f} (x{s['stacked']}) | "
            f"{hours(loo)} ({s['models']} x {s['retrain_steps']:,} steps) |"
        )
    commit, dirty = records.git_commit()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    report = "\n".join(
        [
            "<!-- generated by `python scripts/paper_cost.py`, do not edit -->",
            "",
            "# What the Table 1 rows cost at the paper's data sizes, on a CPU",
            "",
            f"Each committed `cpu`-preset config switched to the `{args.preset}` preset (`--set TASK.preset="
            f"{args.preset}`; the `paper` preset: the whole training set, 30,000 SGD steps and two phases of 5,000 at "
            "lower rates, L-BFGS capped at 5,000 iterations, leave-one-out re-training of 6% of the steps). Each "
            "stage is timed on a sample and multiplied out: SGD steps of one model; one gradient of the full "
            "objective, of which an L-BFGS iteration takes at least one (the polish stops earlier where it reaches "
            "its tolerance); one Hessian-vector product over the training set, which one CG iteration takes "
            "(iterations per test point vary: the `cpu`-preset records state theirs); the dense Hessian of `exact`, "
            f"timed on blocks of {HESSIAN_BLOCK} products (an upper estimate: `exact` takes 64 at a time); "
            "leave-one-out steps with the models stacked as the ground-truth engine picks "
            f"({TOP_K_SEEDS} seeds x the config's top k at one test point; each estimator's own top k adds its own "
            "points). Method: `scripts/paper_cost.py`.",
            f"CPU, 1 torch thread, torch {torch.__version__}, commit {(commit or 'unknown')[:10]}"
            f"{'+dirty' if dirty else ''}, {records.now()}, load average {load} (other jobs on the machine slow "
            "every figure alike).",
            "",
            "| config | task | model | weight decay | n train | parameters | ms per SGD step | training | s per "
            "gradient | L-BFGS, at its cap | s per HVP | CG, 100 iterations | exact (dense Hessian) | ms per "
            "leave-one-out step-model (stacked) | leave-one-out ground truth |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
