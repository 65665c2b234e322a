"""What a run records: the diagnostics of its problem, the summary of its ground truth, and one record per estimator
and selection (schema: :mod:`benchmark.contracts.records`), with the scores of the estimator's estimates against the
re-trained effects of the training points it selected."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from benchmark.contracts.task import Protocol
from benchmark.evaluation.estimation import Evaluation, no_ihvp_reason
from benchmark.evaluation.scoring import bootstrap_interval, correlations, datamodeling_score, repeat_ceiling
from benchmark.evaluation.selections import selection_description
from benchmark.groundtruth.engine import GroundTruth, LooEffect
from benchmark.groundtruth.lds import SubsetGroundTruth
from benchmark.groundtruth.pbrf import PbrfEffect, PbrfGroundTruth
from benchmark.groundtruth.scratch import ScratchGroundTruth
from benchmark.numerics.curvature import DenseHessian, top_eigenvalue
from benchmark.numerics.problem import Problem

log = logging.getLogger("bench")

CONVERGENCE_TOL = 1e-4
"""An optimum whose objective gradient norm exceeds this is reported as not converged."""


def score_selection(
    scores: np.ndarray,
    indices: list[int],
    effects: list[dict[int, LooEffect]],
) -> tuple[list[float], np.ndarray, dict[str, dict[str, Any]]]:
    """How well an estimator's ``scores`` predict re-training on the training points ``indices`` (a selection):
    the estimated loss changes, the re-trained ones per ground-truth seed (``[seeds, len(indices)]``), and the
    Pearson and Spearman correlations of the first with the mean of the second
    (:func:`benchmark.evaluation.scoring.correlations`).
    """
    estimated = [float(scores[i]) for i in indices]
    per_seed = np.array([[seed_effects[i].loss_change for i in indices] for seed_effects in effects])
    return estimated, per_seed, correlations(estimated, per_seed.mean(axis=0).tolist())


def problem_diagnostics(problem: Problem, dense: DenseHessian | None, eigenvalue_iterations: int) -> dict[str, Any]:
    """The trained problem's size, gradient norm (whether the optimum converged) and extreme Hessian eigenvalues: from
    the dense Hessian where the run has one, else the top one by ``eigenvalue_iterations`` of power iteration."""
    gradient_norm = problem.gradient_norm()
    diagnostics: dict[str, Any] = {
        "n_train": problem.n_train,
        "n_params": problem.n_params,
        "weight_decay": problem.weight_decay,
        "gradient_norm": gradient_norm,
        "convergence_tol": CONVERGENCE_TOL,
        "converged": gradient_norm <= CONVERGENCE_TOL,
    }
    if dense is not None:
        diagnostics["top_eigenvalue"] = float(dense.eigenvalues[-1])
        diagnostics["bottom_eigenvalue"] = float(dense.eigenvalues[0])
    else:
        diagnostics["top_eigenvalue"] = top_eigenvalue(problem, eigenvalue_iterations)
    if not diagnostics["converged"]:
        log.warning("the optimum is not converged: gradient norm %.3g > %.0e", gradient_norm, CONVERGENCE_TOL)
    return diagnostics


def ground_truth_summary(
    ground_truths: list[GroundTruth],
    effects: list[dict[int, LooEffect]],
    protocol: Protocol,
    needed: list[int],
    executor: str,
) -> dict[str, Any]:
    """The ``ground_truth`` field of a run's records: the protocol, the reference's drift against the median effect,
    and how many entries were cached or computed, in how long, by which ``executor``."""
    references = [ground_truth.reference() for ground_truth in ground_truths]
    drifts = [reference.drift for reference in references]
    magnitudes = [abs(e.loss_change) for per_seed in effects for e in per_seed.values()]
    median_effect = float(np.median(magnitudes)) if magnitudes else None
    first = ground_truths[0]
    if isinstance(first, ScratchGroundTruth):
        method: dict[str, Any] = {
            "kind": "loo-scratch",
            "protocol": "leave-one-out re-training from scratch (the task's SGD phases, one initialisation per seed)",
            "phases": [dataclasses.asdict(phase) for phase in first.run.phases],
            "reference": "a model trained from scratch on the full data with the same initialisation and minibatches",
        }
    else:
        method = {
            "protocol": "leave-one-out re-training from the optimum",
            "recipe": dataclasses.asdict(protocol.retrain),
            "reference": "the optimum re-trained with the same recipe and minibatches on the full data",
        }
    return {
        **method,
        "seeds": len(ground_truths),
        "test_loss_dtype": "float64",
        "reference_test_loss": references[0].test_loss,
        "reference_drift": float(np.mean(drifts)),
        "reference_drift_per_seed": drifts,
        "median_abs_effect": median_effect,
        # from scratch, the reference's distance from theta* is no drift of the measurement: every effect is a
        # difference from that reference, so no ratio flags it
        "drift_to_effect": (
            abs(float(np.mean(drifts))) / median_effect
            if median_effect and not isinstance(first, ScratchGroundTruth)
            else None
        ),
        "points": len(needed),
        "cached": sum(g.stats.cached for g in ground_truths),
        "computed": sum(g.stats.computed for g in ground_truths),
        "corrupt_recomputed": sum(g.stats.corrupt for g in ground_truths),
        "seconds": sum(g.stats.seconds for g in ground_truths),
        "chunk_size": ground_truths[0].stats.chunk_size,
        "executor": executor,
        "cache_key": ground_truths[0].key,
    }


def pbrf_summary(
    ground_truth: PbrfGroundTruth, effects: dict[int, LooEffect], needed: list[int], executor: str
) -> dict[str, Any]:
    """The ``ground_truth`` field of a run's ``pbrf`` (or ``prox``) records: the definition (damping, solver), how far
    each solve got (the worst relative gradient norm, and how many stayed above the tolerance), and what was cached or
    computed. ``reference_drift`` is 0 for the PBRF (``theta*`` is its reference) and, for ``prox``, how far the
    solve with nothing removed moved the test loss (zero at a stationary optimum)."""
    solver = ground_truth.solver
    reference = ground_truth.reference()
    reached = [e.gradient_norm for e in effects.values() if isinstance(e, PbrfEffect)]
    magnitudes = [abs(e.loss_change) for e in effects.values()]
    stats = ground_truth.stats
    return {
        "kind": ground_truth.kind,
        "protocol": (
            "proximal leave-one-out response from the optimum (the training objective plus the proximity term), "
            "float64, Newton-CG"
            if ground_truth.kind == "prox"
            else "proximal Bregman response from the optimum (Bae et al. 2022), float64, Newton-CG"
        ),
        "damping": solver.damping,
        "solver": dataclasses.asdict(solver),
        "seeds": 1,
        "reference_drift": reference.drift,
        "test_loss_dtype": "float64",
        "reference_test_loss": reference.test_loss,
        "median_abs_effect": float(np.median(magnitudes)) if magnitudes else None,
        "worst_gradient_norm": max(reached) if reached else None,
        "unsolved": sum(value > solver.rtol for value in reached),
        "points": len(needed),
        "cached": stats.cached,
        "computed": stats.computed,
        "corrupt_recomputed": stats.corrupt,
        "seconds": stats.seconds,
        "chunk_size": stats.chunk_size,
        "executor": executor,
        "cache_key": ground_truth.key,
    }


def estimator_record(
    common: dict[str, Any],
    evaluation: Evaluation,
    selection: str,
    indices: list[int] | None,
    effects: list[dict[int, LooEffect]],
    k: int,
    problem_diagnostics: dict[str, Any],
    task_diagnostics: dict[str, Any],
    paper: dict[str, float] | None,
) -> dict[str, Any]:
    """The record of ``evaluation``'s estimator on ``selection`` (its training points ``indices``, ``None`` where it
    failed or was skipped), given the fields ``common`` to every record of the run and the paper's figure ``paper``:
    its status, timings and diagnostics and, where it scored, its metrics against the re-trained ``effects`` (one
    mapping per ground-truth seed) and the points behind them. Its estimator name is the evaluation's label: the
    estimator's name, with the swept hyperparameters of a study's ``estimator_sweep`` (``tracin[checkpoints=5]``)."""
    name = evaluation.label
    record = {
        **common,
        "estimator": {"name": name, "plugin": evaluation.plugin, "hyperparameters": evaluation.hyperparameters},
        "selection": {"kind": selection, "size": k, "description": selection_description(selection)},
        "status": ("skipped" if evaluation.skipped else "failed") if evaluation.failure else "ok",
        "failure": evaluation.failure,
        "timings": evaluation.timings,
        "diagnostics": {
            "problem": problem_diagnostics,
            "estimator": evaluation.diagnostics,
            "task": task_diagnostics,
        },
        "paper": paper,
        "metrics": None,
        "points": None,
    }
    if evaluation.failure is not None or evaluation.scores is None or indices is None:
        return record
    estimated, per_seed, metrics = score_selection(evaluation.scores, indices, effects)
    norms_per_seed = np.array([[seed_effects[i].param_change_norm for i in indices] for seed_effects in effects])
    retrained = per_seed.mean(axis=0).tolist()
    for method, entry in metrics.items():
        entry["interval"] = bootstrap_interval(method, estimated, per_seed) if entry["value"] is not None else None
    points: dict[str, Any] = {
        "train_indices": indices,
        "estimated": estimated,
        "retrained": retrained,
        "retrained_per_seed": per_seed.tolist(),
        "retrained_param_norm": norms_per_seed.mean(axis=0).tolist(),
    }
    if evaluation.param_failure is None:
        points["estimated_param_norm"] = [evaluation.param_norms[i] for i in indices]
        norm_metrics = correlations(points["estimated_param_norm"], points["retrained_param_norm"])
    else:
        reason = evaluation.param_failure
        plain = reason.startswith(("not computed", "n/a"))
        undefined = {"value": None, "undefined": reason if plain else f"parameter change failed: {reason}"}
        norm_metrics = {"pearson": undefined, "spearman": undefined}
    record["metrics"] = {
        **metrics,
        "ceiling": {method: repeat_ceiling(method, per_seed) for method in metrics},
        "param_norm_pearson": norm_metrics["pearson"],
        "param_norm_spearman": norm_metrics["spearman"],
        "ihvp_relative_residual": evaluation.residual,
    }
    if evaluation.estimator.no_ihvp is not None:
        record["metrics"]["ihvp_residual_undefined"] = no_ihvp_reason(evaluation.estimator)
    record["points"] = points
    return record


def lds_summary(ground_truths: list[SubsetGroundTruth], test_indices: list[int], executor: str) -> dict[str, Any]:
    """The ``ground_truth`` field of a run's linear-datamodeling records: the design, the training phases, how many
    subset models were cached or trained, in how long (and how many models per minute were trained)."""
    first = ground_truths[0]
    design = first.design
    computed = sum(g.stats.computed for g in ground_truths)
    seconds = sum(g.stats.seconds for g in ground_truths)
    phases = [dataclasses.asdict(phase) for phase in first.run.phases]
    return {
        "kind": "lds",
        "protocol": (
            f"linear datamodeling: {design.subsets} random subsets of {design.fraction:g} of the training set, each "
            "trained from scratch with the task's recipe"
        ),
        "subsets": design.subsets,
        "fraction": design.fraction,
        "design_seed": design.seed,
        "phases": phases,
        "seeds": len(ground_truths),
        "test_points": len(test_indices),
        "test_loss_dtype": "float64",
        "points": design.subsets,
        "cached": sum(g.stats.cached for g in ground_truths),
        "computed": computed,
        "corrupt_recomputed": sum(g.stats.corrupt for g in ground_truths),
        "seconds": seconds,
        "models_per_minute": 60.0 * computed / seconds if computed and seconds > 0 else None,
        "chunk_size": first.stats.chunk_size,
        "executor": executor,
        "cache_key": first.key,
    }


def lds_record(
    common: dict[str, Any],
    evaluation: Evaluation,
    scores: tuple[np.ndarray | None, str | None],
    masks: np.ndarray,
    measured: np.ndarray,
    test_indices: list[int],
    problem_diagnostics: dict[str, Any],
    task_diagnostics: dict[str, Any],
    paper: dict[str, float] | None,
) -> dict[str, Any]:
    """The linear-datamodeling record of ``evaluation``'s estimator: selection ``lds``, its ``spearman`` and
    ``pearson`` the linear datamodeling score (:func:`benchmark.evaluation.scoring.datamodeling_score`: the mean
    over ``test_indices`` of the correlation over subsets), its ceiling from the training seeds, and under
    ``metrics.lds`` each test point's score. ``scores``: the estimator's ``[T, n]`` influence on the test points, or
    ``None`` and why it failed on them."""
    values, failure = scores
    failure = evaluation.failure or failure
    subsets, fraction = common["ground_truth"]["subsets"], common["ground_truth"]["fraction"]
    record = {
        **common,
        "estimator": {
            "name": evaluation.label,
            "plugin": evaluation.plugin,
            "hyperparameters": evaluation.hyperparameters,
        },
        "selection": {
            "kind": "lds",
            "size": subsets,
            "description": (
                f"linear datamodeling score: {subsets} subsets of {fraction:g} of the training set, "
                f"{len(test_indices)} test points"
            ),
        },
        "status": ("skipped" if evaluation.skipped else "failed") if failure else "ok",
        "failure": failure,
        "timings": evaluation.timings,
        "diagnostics": {"problem": problem_diagnostics, "estimator": evaluation.diagnostics, "task": task_diagnostics},
        "paper": paper,
        "metrics": None,
        "points": None,
    }
    if failure is not None or values is None:
        return record
    result = datamodeling_score(values, masks, measured)
    record["metrics"] = {
        "spearman": result["spearman"],
        "pearson": result["pearson"],
        "ceiling": result["ceiling"],
        "lds": {
            "test_indices": test_indices,
            "per_point": result["per_point"],
            "undefined_points": {str(test_indices[t]): reason for t, reason in result["undefined_points"].items()},
        },
    }
    return record
