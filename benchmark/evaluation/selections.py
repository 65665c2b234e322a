"""What a run scores: the test point (:func:`select_test_point`) and, per estimator, the training points of each
selection (:func:`select`, see :data:`SELECTIONS`)."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.common.errors import UnknownNameError, UsageError
from benchmark.numerics.problem import Problem

SELECTIONS = {
    "top": "top-k by |estimated influence|, each estimator its own (the paper's protocol)",
    "top-positive": "the k largest estimated influences, each estimator its own: the points whose removal it predicts "
    "raises the test loss most (another reading of the paper's top-k)",
    "top-negative": "the k smallest estimated influences, each estimator its own: the points whose removal it predicts "
    "lowers the test loss most",
    "random": "k training points drawn uniformly with the run's seed, the same for every estimator",
    "pNN": "the k training points whose estimated influence is nearest its NN-th percentile, each estimator its own "
    "(the paper's Fig. 3b uses p30)",
}


def selection_description(selection: str) -> str:
    """What ``selection`` scores (a key of :data:`SELECTIONS`, or ``pNN`` with ``NN`` in 0..100); a one-line error for
    anything else."""
    if selection in SELECTIONS and selection != "pNN":
        return SELECTIONS[selection]
    if selection.startswith("p") and selection[1:].isdigit() and 0 <= int(selection[1:]) <= 100:
        return SELECTIONS["pNN"].replace("NN-th", f"{int(selection[1:])}th")
    raise UnknownNameError("selection", selection, ["top", "top-positive", "top-negative", "random", "p0..p100"])


def select(selection: str, scores: np.ndarray, k: int, random_set: list[int]) -> list[int]:
    """The training indices ``selection`` scores, given one estimator's influence ``scores``
    (see :data:`SELECTIONS`)."""
    if selection == "top":
        return np.argsort(-np.abs(scores), kind="stable")[:k].tolist()
    if selection == "top-positive":
        return np.argsort(-scores, kind="stable")[:k].tolist()
    if selection == "top-negative":
        return np.argsort(scores, kind="stable")[:k].tolist()
    if selection == "random":
        return random_set
    target = np.percentile(scores, int(selection[1:]))
    return np.argsort(np.abs(scores - target), kind="stable")[:k].tolist()


def parse_test_point(rule: str | int) -> tuple[str, float]:
    """Check a test-point rule: ``("max-loss", 0)``, ``("percentile", q)`` with ``q`` in [0, 1], or ``("index", i)``."""
    if isinstance(rule, int) and not isinstance(rule, bool):
        if rule < 0:
            raise UsageError(f"bad test point {rule}: a test index must be >= 0")
        return "index", rule
    if rule == "max-loss":
        return "max-loss", 0.0
    if isinstance(rule, str) and rule.startswith("p"):
        try:
            quantile = float(rule[1:]) / 100
        except ValueError:
            quantile = -1.0
        if 0 <= quantile <= 1:
            return "percentile", quantile
    raise UsageError(f"bad test point {rule!r}: expected max-loss, p0..p100 (a loss percentile) or a test index")


def select_test_point(problem: Problem, rule: str | int) -> tuple[int, float]:
    """The test index chosen by ``rule`` (see :func:`parse_test_point`) and its loss at the optimum."""
    kind, value = parse_test_point(rule)
    losses = problem.test_losses()
    if kind == "index":
        if value >= len(losses):
            raise UsageError(f"test point {value} out of range (the test set has {len(losses)} points)")
        index = int(value)
    elif kind == "max-loss":
        index = int(losses.argmax())
    else:
        target = torch.quantile(losses, value)
        index = int((losses - target).abs().argmin())
    return index, float(losses[index])
