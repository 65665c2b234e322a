"""How stationary are the vision tasks' optima, before and after the final full-batch L-BFGS phase?

    python scripts/stationarity.py [CONFIG.yaml ...] [--set TASK.FIELD=VALUE ...] [--trajectory N] [--cache-dir D]
                                   [--output FILE]

For each run config (default: every ``leaderboards/configs/*.yaml``) builds the task's optimum twice from the shared
cache: with ``lbfgs_steps=0`` (the SGD schedule alone) and as configured (then L-BFGS on the whole objective).
Reports the gradient norm of the full objective, the test loss at the optimum, and the reference drift of the
config's test point: the change of its loss from re-training the full data with the protocol's recipe, which the
leave-one-out ground truth subtracts. ``--set`` changes a task option of every config (the float64 polish of a
config: ``--set mnist.lbfgs_dtype=float64``); ``--trajectory N`` adds the objective and its gradient norm at every
``N``-th checkpointed L-BFGS iteration, as a table and a figure. Writes a Markdown table (default
``leaderboards/stationarity.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmark.common import config as configuration
from benchmark.common.cache import Cache, default_cache_dir
from benchmark.common.errors import UsageError
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.task import BuildContext
from benchmark.evaluation.recording import CONVERGENCE_TOL
from benchmark.evaluation.selections import select_test_point
from benchmark.groundtruth.engine import GroundTruth
from benchmark.numerics.training import CHECKPOINT_EVERY


def config_task(registry: Registry, path: Path, overrides: Sequence[str] = ()):
    """The task a run config YAML declares (its ``task:`` and that task's section, then ``overrides``: ``--set``'s
    ``TASK.FIELD=VALUE``), as ``bench run --config`` builds it; ``scripts/smoothness.py``,
    ``scripts/batched_queries.py`` and ``scripts/paper_cost.py`` take their tasks from here too."""
    declared = configuration.load_yaml(path)
    name = declared["task"]
    task_cls = registry.task(name)
    section = {**declared.get(name, {}), **configuration.parse_set(list(overrides)).get(name, {})}
    return task_cls(configuration.build(task_cls.Config, section, name))


def measure(task, cache: Cache) -> dict:
    start = time.perf_counter()
    problem = task.build(BuildContext("cpu", 0, cache, progress=False))
    seconds = time.perf_counter() - start
    protocol = task.protocol()
    test_index, _ = select_test_point(problem, protocol.test_point)
    truth = GroundTruth(problem, protocol.retrain, cache, task.problem_key(0), test_index)
    reference = truth.reference()
    return {
        "gradient_norm": problem.gradient_norm(),
        "seconds": seconds,
        "test_index": test_index,
        "train_loss": float(problem.losses(problem.theta, problem.x_train, problem.y_train).mean()),
        "drift": reference.drift,
        "test_loss": reference.optimum_test_loss,
    }


def trajectory(task, sgd_only, cache: Cache, every: int) -> list[tuple[int, float, float]]:
    """``(iteration, J, |grad J|)`` at every ``every``-th L-BFGS checkpoint of ``task``'s polish that the cache holds
    (the objective in the polish's precision)."""
    problem = sgd_only.build(BuildContext("cpu", 0, cache, progress=False))
    problem = problem.to(dtype=getattr(torch, task.config.lbfgs_dtype))
    key = {**task.polish_checkpoints(0), "phase": 0}
    points = []
    for step in range(every, task.config.lbfgs_steps + 1, every):
        found = cache.load_tensors("polish-checkpoints", {**key, "step": step}, warn=False)
        if found is not None:
            value, gradient = problem.objective_and_gradient(found["theta"].to(problem.theta))
            points.append((step, value, float(torch.linalg.vector_norm(gradient))))
    return points


def plot_trajectories(trajectories: dict[str, list[tuple[int, float, float]]], path: Path) -> None:
    """The objective and its gradient norm against the L-BFGS iteration, one line per optimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (objective, norm) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in trajectories.items():
        steps, values, norms = zip(*points, strict=True)
        objective.plot(steps, values, marker=".", label=label)
        norm.plot(steps, norms, marker=".", label=label)
    norm.axhline(CONVERGENCE_TOL, color="black", linestyle="--", linewidth=1, label="convergence check")
    norm.set_yscale("log")
    objective.set(xlabel="L-BFGS iteration", ylabel="objective J (loss + weight decay)", title="Objective")
    norm.set(xlabel="L-BFGS iteration", ylabel="|grad J|", title="Gradient norm")
    norm.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path("leaderboards") / "stationarity.md")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TASK.FIELD=VALUE",
        help="a task option for every config (e.g. mnist.lbfgs_dtype=float64); the table states it",
    )
    parser.add_argument(
        "--trajectory",
        type=int,
        default=0,
        metavar="N",
        help=f"also tabulate and plot J and |grad J| at every N-th L-BFGS iteration the polish checkpointed (a "
        f"multiple of {CHECKPOINT_EVERY}; the figure goes beside --output as .png)",
    )
    args = parser.parse_args()
    if args.trajectory < 0 or args.trajectory % CHECKPOINT_EVERY:
        parser.error(f"--trajectory {args.trajectory}: expected a positive multiple of {CHECKPOINT_EVERY}")
    try:
        configuration.parse_set(args.overrides)
    except UsageError as error:
        parser.error(str(error))
    configs = args.configs or sorted(Path("leaderboards/configs").glob("*.yaml"))
    cache = Cache(args.cache_dir or default_cache_dir())
    registry = Registry(plugin_manager())
    torch.set_num_threads(1)
    rows = []
    # per polish (its checkpoints' key): the configs on it and its trajectory; test points A and B share an optimum
    trajectories: dict[str, tuple[list[str], list[tuple[int, float, float]]]] = {}
    for path in configs:
        polished = config_task(registry, path, args.overrides)
        name = polished.name
        sgd_only = type(polished)(dataclasses.replace(polished.config, lbfgs_steps=0))
        print(f"== {path.name}: SGD schedule", flush=True)
        before = measure(sgd_only, cache)
        print(
            f"   |grad| {before['gradient_norm']:.3g}, drift {before['drift']:.3g} ({before['seconds']:.0f} s)",
            flush=True,
        )
        print(f"== {path.name}: then L-BFGS (at most {polished.config.lbfgs_steps} iterations)", flush=True)
        after = measure(polished, cache)
        print(
            f"   |grad| {after['gradient_norm']:.3g}, drift {after['drift']:.3g} ({after['seconds']:.0f} s)", flush=True
        )
        c = polished.config
        if args.trajectory and c.lbfgs_steps:
            checkpoints = repr(polished.polish_checkpoints(0))
            if checkpoints not in trajectories:
                trajectories[checkpoints] = ([], trajectory(polished, sgd_only, cache, args.trajectory))
            trajectories[checkpoints][0].append(path.stem)
        rows.append(
            f"| `{path.name}` | {name} | {c.model} | {c.weight_decay:g} | {c.train_size} | {c.lbfgs_dtype} | "
            f"{before['gradient_norm']:.2e} | {after['gradient_norm']:.2e} | "
            f"{'yes' if after['gradient_norm'] <= CONVERGENCE_TOL else '**no**'} | "
            f"{before['train_loss']:.3g} | {after['train_loss']:.3g} | "
            f"#{before['test_index']} | #{after['test_index']} | "
            f"{before['drift']:.2e} | {after['drift']:.2e} |"
        )
    commit, dirty = records.git_commit()
    command_tail = "".join(f" {path}" for path in args.configs) + "".join(f" --set {item}" for item in args.overrides)
    command_tail += f" --trajectory {args.trajectory}" if args.trajectory else ""
    report = "\n".join(
        [
            f"<!-- generated by `python scripts/stationarity.py{command_tail}`, do not edit -->",
            "",
            "# Stationarity of the optima behind the committed rows",
            "",
            "Each run config's optimum, on the SGD schedule alone (`lbfgs_steps=0`) and after the final full-batch "
            "L-BFGS phase (the task's default, in the precision the config states): the gradient norm of the full "
            f"training objective (the runner's convergence check is {CONVERGENCE_TOL:g}), the mean training loss, and "
            "the reference drift of the "
            "config's test point at each optimum (its loss change from re-training the full data with the protocol's "
            "recipe, seed 0). The polish's own time is in the log of the run that trained it (the optima here come "
            "from the cache).",
            f"CPU, 1 torch thread, torch {torch.__version__}, commit {(commit or 'unknown')[:10]}"
            f"{'+dirty' if dirty else ''}, {records.now()}."
            + (f" Every config with `--set {' --set '.join(args.overrides)}`." if args.overrides else ""),
            "",
            "| config | task | model | weight decay | n train | L-BFGS in | \\|grad\\| SGD | \\|grad\\| + L-BFGS | "
            "converged | train loss SGD | train loss + L-BFGS | test point SGD | test point + L-BFGS | drift SGD | "
            "drift + L-BFGS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if trajectories:
        labelled = {", ".join(configs): points for configs, points in trajectories.values()}
        figure = args.output.with_suffix(".png")
        plot_trajectories({label: points for label, points in labelled.items() if points}, figure)
        lines = [
            "",
            f"## The L-BFGS phase, every {args.trajectory} iterations",
            "",
            "The full objective `J` and its gradient norm at the polish's checkpoints that the cache holds (a config's "
            "polish resumes from them, so a longer `lbfgs_steps` extends the series).",
            "",
            f"![J and its gradient norm against the L-BFGS iteration]({figure.name})",
            "",
            "| configs | iteration | J | \\|grad J\\| |",
            "|---|---|---|---|",
        ]
        for label, points in labelled.items():
            lines += [f"| {label} | {step} | {value:.8g} | {norm:.2e} |" for step, value, norm in points]
            if not points:
                lines.append(f"| {label} | - | no checkpoint in the cache | - |")
        report += "\n".join(lines) + "\n"
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
