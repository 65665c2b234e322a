"""The leave-one-out definition, checked against exact refits on a strictly convex task.

Removal re-weights a point to 0 and keeps the ``1/n`` normalisation (``benchmark.numerics.training``): the leave-one-out
model minimises ``(1/n) sum_{j != i} l_j + (wd / 2) ||theta||^2``, whose minimiser the influence function linearises. On
L2-regularised logistic regression (``examples/logistic_task.py``) the minimiser is unique, Newton's method finds it to
rounding, and so the harness's ground truth and the ``exact`` estimator can both be held against it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.func import grad, hessian

from benchmark.common.cache import Cache
from benchmark.contracts.task import BuildContext
from benchmark.groundtruth.engine import GroundTruth, removal_weights
from examples.logistic_task import Logistic, LogisticConfig

REMOVED = [0, 7, 19, 101, 240, 333, 454]


@pytest.fixture(scope="module")
def logistic(tmp_path_factory):
    cache = Cache(tmp_path_factory.mktemp("logistic-cache"))
    task = Logistic(LogisticConfig())
    problem = task.build(BuildContext(device="cpu", seed=0, cache=cache, progress=False))
    return task, problem, cache


def newton_refit(problem, weights: torch.Tensor, normaliser: float) -> torch.Tensor:
    """The exact minimiser of ``sum_j w_j l_j / normaliser + (wd / 2) ||theta||^2`` by Newton's method from theta*."""

    def objective(theta: torch.Tensor) -> torch.Tensor:
        losses = problem.losses(theta, problem.x_train, problem.y_train)
        return (losses * weights).sum() / normaliser + 0.5 * problem.weight_decay * theta.dot(theta)

    theta = problem.theta.clone()
    for _ in range(20):
        step = torch.linalg.solve(hessian(objective)(theta), grad(objective)(theta))
        theta = theta - step
        if float(step.norm()) < 1e-15:
            break
    assert float(grad(objective)(theta).norm()) < 1e-12
    return theta


def test_optimum_is_stationary(logistic):
    _, problem, _ = logistic
    assert problem.gradient_norm() < 1e-12


def test_ground_truth_equals_exact_refits(logistic):
    """Each re-trained leave-one-out model is the exact minimiser of the re-weighted objective (1/n kept), and not
    that of the objective renormalised over the n - 1 remaining points."""
    task, problem, cache = logistic
    protocol = task.protocol()
    truth = GroundTruth(problem, protocol.retrain, cache, task.problem_key(0), test_index=3)
    effects = truth.effects(REMOVED)
    reference = truth.reference()
    assert float((reference.theta - problem.theta).norm()) < 1e-12  # re-training alone does not move theta*
    test_x, test_y = problem.x_test[3:4], problem.y_test[3:4]
    n = problem.n_train
    for i in REMOVED:
        weights = torch.ones(n, dtype=torch.float64)
        weights[i] = 0.0
        kept = newton_refit(problem, weights, n)
        renormalised = newton_refit(problem, weights, n - 1)
        expected_loss = float(problem.losses(kept, test_x, test_y)[0]) - reference.test_loss
        assert effects[i].loss_change == pytest.approx(expected_loss, abs=1e-11, rel=1e-8)
        assert effects[i].param_change_norm == pytest.approx(float((kept - reference.theta).norm()), rel=1e-8)
        # the other definition differs by the common term (1/(n-1)) H^-1 (wd theta*): far more than rounding
        assert float((renormalised - kept).norm()) > 1e3 * abs(
            effects[i].param_change_norm - float((kept - reference.theta).norm())
        )


def test_exact_predicts_parameter_changes(bench, tmp_path):
    """``exact`` ranks the re-trained parameter-change norms almost perfectly (Spearman > 0.99), and the loss
    changes too: what the influence function linearises is what the ground truth measures."""
    results = tmp_path / "results"
    result = bench(
        "run",
        "--task",
        "logistic",
        "-p",
        "examples.logistic_task",
        "--estimator",
        "exact",
        "--selection",
        "random",
        "--no-progress",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    (record,) = [json.loads(path.read_text()) for path in sorted((results / "logistic").glob("*.json"))]
    assert record["status"] == "ok"
    metrics = record["metrics"]
    assert metrics["param_norm_spearman"]["value"] > 0.99
    assert metrics["spearman"]["value"] > 0.99
    assert metrics["pearson"]["value"] > 0.99
    assert record["ground_truth"]["points"] == LogisticConfig().eval_size


def test_config_rejects_a_non_convex_setting():
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        dataclasses.replace(LogisticConfig(), weight_decay=0.0)


def test_float32_problem_effects_are_resolved_below_one_float32_step(logistic):
    """On a float32 problem the test losses are evaluated in float64 (``Problem.losses_float64``): each effect is the
    float64 loss difference of the re-trained float32 models, not rounded to whole float32 steps of the test loss, and
    the change is part of the cache key of float32 problems only."""
    task, problem, cache = logistic
    test_index = int(problem.test_losses().argmax())
    x_test = problem.x_test.clone()
    x_test[test_index] *= 20.0  # a test loss near 100, where a float32 step is 7.6e-6
    problem32 = dataclasses.replace(problem, x_test=x_test).to(torch.float32)
    recipe = task.protocol().retrain
    truth = GroundTruth(problem32, recipe, cache, {**task.problem_key(0), "x_test": "scaled"}, test_index)
    effects = truth.effects(REMOVED)
    reference = truth.reference()
    assert reference.test_loss > 64.0
    float32_step = 2.0**-17  # the spacing of float32 numbers in [64, 128)

    weights = removal_weights(REMOVED, problem32.n_train, torch.float32, problem32.device)
    models = truth.retrain(weights, "the same models again")  # deterministic: the models behind the entries
    problem64 = problem32.to(torch.float64)
    x, y = problem64.x_test[test_index : test_index + 1], problem64.y_test[test_index : test_index + 1]
    base = float(problem64.losses(reference.theta.double(), x, y)[0])
    rounded = []
    for model, i in zip(models, REMOVED):
        expected = float(problem64.losses(model.double(), x, y)[0]) - base
        assert effects[i].loss_change == pytest.approx(expected, rel=1e-12, abs=1e-12)
        in_float32 = problem32.losses(model, x.float(), y)[0] - problem32.losses(reference.theta, x.float(), y)[0]
        rounded.append(float(in_float32))
    # float32 evaluation could only give whole steps; some effects are finer than one step, and not zero
    assert all(value / float32_step == round(value / float32_step) for value in rounded)
    fine = [effects[i].loss_change for i in REMOVED if 0 < abs(effects[i].loss_change) < 0.5 * float32_step]
    assert fine, [effects[i].loss_change for i in REMOVED]

    assert truth.key["test_loss_dtype"] == "float64"
    assert "test_loss_dtype" not in GroundTruth(problem, recipe, cache, task.problem_key(0), test_index).key
