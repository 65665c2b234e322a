"""Our multi-model estimators against the libraries that define them, on the same models: ``trak`` against ``traker``
(the TRAK authors' library), ``tracin`` against captum's ``TracInCP`` and dattri's ``TracInAttributor``. Agreement,
time, memory.

    python -m benchmark.peers.attribution_agreement [--models small-cnn,lenet] [--ensembles 1,3]
        [--projection-dims 256,2048] [--checkpoints 5] [--data-dir DIR] [--output leaderboards/attribution-agreement.md]

Needs ``traker`` 0.3.2, captum 0.9.0 and dattri 0.3.0 in the peers' own environment (``pip install -e '.[peers]'``,
see ``benchmark/peers/README.md``); captum and dattri run through their adapters (:mod:`benchmark.peers.adapters`).

**TracIn.** Ours, captum's and dattri's on the same ``--checkpoints`` checkpoints of the task's replayed SGD run (the
replay is cached first and timed by neither), unprojected, with the checkpoints' learning rates as weights; captum
in its default mode (one backward pass per example) in batches of :data:`CAPTUM_BATCH`. The adapters return the
harness's ``[m, n]`` convention already, so the ratio is 1 when they agree.

**TRAK.** Both sides score the same trained models (the ``mnist`` task's ``cpu``-preset optimum, weight decay 0.001 as
the task's default, and, for an ensemble of ``M``, the ``M - 1`` further members :meth:`benchmark.Problem.ensemble`
trains, taken from the harness's cache where trained before), the whole training set and the 10 highest-loss test
points, with the same settings:

* the margin ``log(p / (1 - p))`` (``traker``'s ``image_classification`` task) and its out-to-loss weight ``1 - p``;
* projection dimension ``k`` (:data:`PROJECTION_DIMS`) with ``traker``'s CPU ``BasicProjector`` (Rademacher,
  projector seed 0), which our :func:`benchmark.numerics.projection.projection_matrix` reproduces, so both project
  with the same matrix; ``traker`` in float32 (``use_half_precision=False``), ours in the model's dtype;
* no regularisation (``lambda_reg = 0``), the scores averaged over the models as ``traker``'s ``finalize_scores`` does.

Not Iris: its MLP has 43 parameters and margin gradients of rank 37 (the margin ignores a constant added to every
logit). Projected to more dimensions than that, ``Phi^T Phi`` is singular and ``traker``'s inverse meaningless (ours
does not project at ``k >= P`` and takes a pseudo-inverse); projected to 100 or fewer, ``traker`` 0.3.2's
``BasicProjector`` fails (it deletes its single block's matrix in ``__init__`` and ``project`` then reads it:
``AttributeError: 'BasicProjector' object has no attribute 'proj_matrix'``).

Scores: ``traker`` returns ``[n, m]`` TRAK scores ``tau``; ours is ``(1 - p(z)) tau`` (``estimators/trak.py`` says why),
``[m, n]``. The table gives the worst Pearson correlation over the test points (conversion: transpose; the per-row
factor changes no correlation) and the median ratio of theirs times ``1 - p(z)`` to ours (1 when they agree in scale).
``traker`` divides each model's ``(Phi^T Phi)^-1`` by the mean absolute value of its entries, ours does not (the paper's
formula), so with one model the ratio is that model's ``1 / mean |(Phi^T Phi)^-1|`` and with several ``traker`` weights
the models unequally: then the correlation measures what that weighting changes. Time and the rise of the peak resident
memory run from the models to the ``10 x n`` scores, in this process with one torch thread, after one untimed run of
each; ``traker``'s include writing its feature store to a temporary directory (its only mode). Training the ensemble is
not part of either: both are given the same trained models.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.common import markdown
from benchmark.peers.adapters.captum_adapters import CaptumTracIn, CaptumTracInConfig
from benchmark.peers.adapters.dattri_adapters import DattriTracIn, DattriTracInConfig
from benchmark.peers.curvature_agreement import cost, environment, measure
from benchmark.peers.speed_vs_peers import (
    MODELS,
    REPO,
    build_problem,
    estimator,
    module_at,
    pearson_rows,
    test_points,
)

PROJECTION_DIMS = (256, 2048)
"""``traker``'s default ``proj_dim`` (2048) and one below the numerical rank of the MNIST models' ``Phi^T Phi``."""
BATCH = 256
"""Examples per ``traker`` featurising and scoring batch."""
CAPTUM_BATCH = 256
"""Training examples per batch of captum's gradient passes."""
CHECKPOINTS = 5
"""TracIn's checkpoints (``tracin``'s default)."""


def our_scores(problem: Any, test: Tensor, members: int, k: int) -> tuple[Tensor, list[int]]:
    """Our ``[m, n]`` scores and the rank of each model's ``Phi^T Phi`` that the solve used."""
    ours = estimator("trak", projection_dim=k, models=members)
    ours.prepare(problem)
    return ours.influence(test), ours.diagnostics["gram_ranks"]


def traker_scores(module: torch.nn.Module, problem: Any, test: Tensor, thetas: Tensor, k: int) -> Tensor:
    """``traker``'s ``[n, m]`` scores of ``test`` over the models ``thetas``, with its CPU projector."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    module = module.float()
    n_params = problem.n_params
    with tempfile.TemporaryDirectory() as save_dir:
        projector = BasicProjector(
            grad_dim=n_params, proj_dim=k, seed=0, proj_type=ProjectionType.rademacher, device="cpu"
        )
        traker = TRAKer(
            model=module,
            task="image_classification",
            train_set_size=problem.n_train,
            save_dir=save_dir,
            device="cpu",
            projector=projector,
            proj_dim=k,
            use_half_precision=False,
            logging_level=40,
        )
        states = [
            {name: value.float() for name, value in problem.unflatten(theta.to(problem.theta)).items()}
            for theta in thetas
        ]
        x_train, y_train = problem.x_train.float(), problem.y_train
        x_test, y_test = problem.x_test[test].float(), problem.y_test[test]
        for model_id, state in enumerate(states):
            traker.load_checkpoint(state, model_id=model_id)
            for start in range(0, problem.n_train, BATCH):
                batch = (x_train[start : start + BATCH], y_train[start : start + BATCH])
                traker.featurize(batch=batch, num_samples=len(batch[0]))
        traker.finalize_features()
        for model_id, state in enumerate(states):
            traker.start_scoring_checkpoint(exp_name="test", checkpoint=state, model_id=model_id, num_targets=len(test))
            traker.score(batch=(x_test, y_test), num_samples=len(test))
        return torch.as_tensor(traker.finalize_scores(exp_name="test")).clone()


def compare_trak(model: str, data_dir: str | None, ensembles: list[int], dims: list[int]) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    task, problem = build_problem(MODELS[model], data_dir)
    module = module_at(MODELS[model], task, problem)
    test = test_points(problem)
    with torch.no_grad():
        logits = problem.model(problem.params, problem.x_test[test])
        p_test = torch.softmax(logits.double(), dim=1).gather(1, problem.y_test[test].long().unsqueeze(1)).squeeze(1)
    rows = []
    for members in ensembles:
        thetas = problem.ensemble(members).thetas if members > 1 else problem.theta.unsqueeze(0)
        for k in dims:
            # untimed first calls: they pay for lazy imports and the first torch.func transforms
            our_scores(problem, test, members, k)
            traker_scores(module, problem, test, thetas, k)
            (ours, ranks), our_seconds, our_peak = measure(our_scores, problem, test, members, k)
            theirs, their_seconds, their_peak = measure(traker_scores, module, problem, test, thetas, k)
            aligned = theirs.double().T * (1 - p_test).unsqueeze(1)
            rows.append(
                {
                    "model": model,
                    "n_train": problem.n_train,
                    "n_params": problem.n_params,
                    "dtype": str(problem.dtype).removeprefix("torch."),
                    "method": "trak",
                    "peer": "traker",
                    "setting": f"{members} model{'s' if members > 1 else ''}, k = {k}",
                    "note": "rank of Phi^T Phi (ours): " + ", ".join(str(rank) for rank in ranks),
                    "pearson": float(pearson_rows(ours.double(), aligned).min()),
                    "ratio": float((aligned / ours.double()).nanmedian()),
                    "ours": (our_seconds, our_peak),
                    "theirs": (their_seconds, their_peak),
                }
            )
            print(rows[-1], flush=True)
    return rows


def run_estimator(estimator: Any, problem: Any, test: Tensor) -> Tensor:
    estimator.prepare(problem)
    return estimator.influence(test)


def compare_tracin(model: str, data_dir: str | None, checkpoints: int) -> list[dict[str, Any]]:
    """Our ``tracin`` against captum's and dattri's on the same checkpoints."""
    torch.set_num_threads(1)
    _, problem = build_problem(MODELS[model], data_dir)
    test = test_points(problem)
    problem.trajectory(checkpoints)  # the replay, cached, timed by none of them
    peers = {
        "captum": lambda: CaptumTracIn(CaptumTracInConfig(checkpoints=checkpoints, batch_size=CAPTUM_BATCH)),
        "dattri": lambda: DattriTracIn(DattriTracInConfig(checkpoints=checkpoints)),
    }
    rows = []
    for peer, make in peers.items():
        run_estimator(estimator("tracin", checkpoints=checkpoints), problem, test)  # untimed first calls
        run_estimator(make(), problem, test)
        ours, our_seconds, our_peak = measure(
            run_estimator, estimator("tracin", checkpoints=checkpoints), problem, test
        )
        theirs, their_seconds, their_peak = measure(run_estimator, make(), problem, test)
        rows.append(
            {
                "model": model,
                "n_train": problem.n_train,
                "n_params": problem.n_params,
                "dtype": str(problem.dtype).removeprefix("torch."),
                "method": "tracin",
                "peer": peer,
                "setting": f"{checkpoints} checkpoints, unprojected",
                "note": "",
                "pearson": float(pearson_rows(ours.double(), theirs.double()).min()),
                "ratio": float((theirs.double() / ours.double()).nanmedian()),
                "ours": (our_seconds, our_peak),
                "theirs": (their_seconds, their_peak),
            }
        )
        print(rows[-1], flush=True)
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
    table = [
        [
            row["model"],
            f"{row['n_train']:,} / {row['n_params']:,}",
            row["dtype"],
            f"`{row['method']}`",
            row["peer"],
            row["setting"],
            f"{row['pearson']:.6f}",
            f"{row['ratio']:.4f}",
            *cost(row["ours"]),
            *cost(row["theirs"]),
            row["note"] or "-",
        ]
        for row in rows
    ]
    header = [
        "model",
        "n train / params",
        "our dtype",
        "ours",
        "against",
        "setting",
        "Pearson (worst of 10)",
        "theirs / ours, median (aligned)",
        "ours s",
        "ours +peak MiB",
        "theirs s",
        "theirs +peak MiB",
        "note",
    ]
    lines = [
        "<!-- generated by `python -m benchmark.peers.attribution_agreement`, do not edit -->",
        "",
        "# TRAK and TracIn: ours against the libraries that define them",
        "",
        "Our `trak` against `traker`'s `TRAKer` (CPU `BasicProjector`: the same projection matrix, projection "
        "dimension k, no regularisation) and our `tracin` against captum's `TracInCP` and dattri's `TracInAttributor`"
        " (the same checkpoints, unprojected), each pair on the same trained models, training set and 10 highest-loss"
        " test points; time and the rise of the peak resident memory over the resident size before (+peak) from the "
        "models to the 10 x n scores, one torch thread, in one process, after one untimed run of each. Conventions, "
        "and why traker's scale differs: `benchmark/peers/attribution_agreement.py`.",
        f"{meta['device']}; {meta['versions']}; commit {meta['commit']}, {meta['date']}. Command: `{meta['command']}`.",
        "",
        markdown.table(header, table),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmark.peers.attribution_agreement", description=__doc__)
    parser.add_argument("--models", default="small-cnn,lenet", help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--ensembles", default="1,3", help="comma-separated ensemble sizes")
    parser.add_argument(
        "--projection-dims", default=",".join(map(str, PROJECTION_DIMS)), help="comma-separated projection dimensions"
    )
    parser.add_argument("--checkpoints", type=int, default=CHECKPOINTS, help="TracIn's checkpoints")
    parser.add_argument("--data-dir", default=None, help="MNIST in torchvision's layout (default $BENCH_DATA_DIR)")
    parser.add_argument("--output", default=str(REPO / "leaderboards" / "attribution-agreement.md"))
    args = parser.parse_args(argv)
    models = [name for name in args.models.split(",") if name]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choices: {', '.join(MODELS)})")
    sizes = {}
    for option in ("ensembles", "projection_dims"):
        text = getattr(args, option)
        try:
            sizes[option] = [int(size) for size in text.split(",") if size]
        except ValueError:
            parser.error(f"--{option.replace('_', '-')} {text!r} is not a comma-separated list of integers")
        if not sizes[option] or min(sizes[option]) < 1:
            parser.error(f"--{option.replace('_', '-')} {text!r} needs values of at least 1")
    for package, module in (("traker", "trak"), ("captum", "captum"), ("dattri", "dattri")):
        try:
            importlib.import_module(module)  # checked before anything is trained
        except ImportError:
            parser.error(f"{package} is not installed: pip install -e '.[peers]' into the peers' own environment")
    meta = environment(argv, "benchmark.peers.attribution_agreement", ("torch", "traker", "captum", "dattri"))
    rows = []
    for model in models:
        rows += compare_trak(model, args.data_dir, sizes["ensembles"], sizes["projection_dims"])
        rows += compare_tracin(model, args.data_dir, args.checkpoints)
    Path(args.output).write_text(render(rows, meta))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
