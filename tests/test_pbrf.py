"""The proximal Bregman response (``--truth pbrf``), checked against independent solves and the influence function.

- On L2-regularised logistic regression (a model linear in ``theta``, at an exact optimum) the Bregman term is the
  training objective's own Bregman divergence, so the PBRF minimiser is the minimiser of ``J_-m + (lambda / 2)
  ||theta - theta*||^2``: held against Newton's method on that objective.
- Its linearisation is the damped influence function ``(1/n) g_test^T (G + lambda I)^-1 g_m``: the relative gap
  between the two shrinks in proportion to the removed weight.
- On an Iris MLP (nonlinear, Gauss-Newton differs from the Hessian) against Newton's method on a dense float64
  Hessian of ``F`` written out independently.
- The cache, the executors, the CLI and the records, as for leave-one-out.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import grad, hessian

from benchmark.common.cache import Cache
from benchmark.contracts.task import BuildContext
from benchmark.evaluation.selections import select_test_point
from benchmark.groundtruth.pbrf import BregmanObjective, PbrfGroundTruth, PbrfSolver, ProximalGroundTruth
from examples.logistic_task import Logistic, LogisticConfig
from tasks.iris import Iris, IrisConfig
from tests.conftest import assert_one_line_error

REMOVED = [0, 7, 19, 101, 240]
TIGHT = 1e-8


@pytest.fixture(scope="module")
def logistic(tmp_path_factory):
    cache = Cache(tmp_path_factory.mktemp("pbrf-logistic"))
    task = Logistic(LogisticConfig())
    problem = task.build(BuildContext(device="cpu", seed=0, cache=cache, progress=False))
    test_index, _ = select_test_point(problem, "max-loss")
    return task, problem, test_index


def test_logistic_pbrf_is_the_proximal_refit(logistic, tmp_path):
    """On a linear model at its optimum, PBRF = argmin J_-m + (lambda/2)||theta - theta*||^2 (test-loss change to
    1e-8 relative), for two dampings; so with a small damping it approaches the leave-one-out refit."""
    task, problem, test_index = logistic
    n = problem.n_train
    theta_star = problem.theta.clone()
    x, y = problem.x_test[test_index : test_index + 1], problem.y_test[test_index : test_index + 1]
    for damping in (1e-2, 1e-6):
        truth = PbrfGroundTruth(
            problem, PbrfSolver(damping, rtol=TIGHT), Cache(tmp_path / str(damping)), task.problem_key(0), test_index
        )
        effects = truth.effects(REMOVED)
        for m in REMOVED:
            weights = torch.ones(n, dtype=torch.float64)
            weights[m] = 0.0

            def objective(theta, weights=weights, damping=damping):
                losses = problem.losses(theta, problem.x_train, problem.y_train)
                return (
                    (losses * weights).sum() / n
                    + 0.5 * problem.weight_decay * theta.dot(theta)
                    + 0.5 * damping * (theta - theta_star).square().sum()
                )

            theta = theta_star.clone()
            for _ in range(20):
                theta = theta - torch.linalg.solve(hessian(objective)(theta), grad(objective)(theta))
            expected = float(problem.losses(theta, x, y)[0] - problem.losses(theta_star, x, y)[0])
            # a well-fitted point moves the test loss by ~1e-9: float64 resolves its gradient to ~1e-7 of its start
            assert effects[m].loss_change == pytest.approx(expected, rel=1e-7, abs=1e-12), (damping, m)
            assert effects[m].gradient_norm <= (TIGHT if abs(expected) > 1e-6 else 1e-6), (damping, m)


def test_pbrf_linearisation_is_the_damped_influence_function(logistic):
    """Removing weight t of point m: PBRF(t) / t -> the damped influence (1/n) g_test^T (G + lambda I)^-1 g_m, the gap
    shrinking in proportion to t (second-order remainder)."""
    _, problem, test_index = logistic
    damping = 1e-3
    objective = BregmanObjective(problem, damping)
    problem64 = problem.to(torch.float64)
    g_test = problem64.test_gradients([test_index])[0]
    ggn = problem64.ggn() + damping * torch.eye(problem.n_params, dtype=torch.float64)
    solver = PbrfSolver(damping, rtol=TIGHT)
    for m in (0, 7, 19):
        g_m = problem64.train_gradients([m])[0]
        influence = float(g_test @ torch.linalg.solve(ggn, g_m)) / problem.n_train
        gaps = []
        for t in (1.0, 0.1, 0.01):
            weights = torch.ones(1, problem.n_train, dtype=torch.float64)
            weights[0, m] = 1.0 - t
            thetas, relative, _ = objective.solve(weights, solver)
            assert float(relative[0]) <= TIGHT
            base = objective.test_loss(objective.theta_star[None], test_index)[0]
            change = float(objective.test_loss(thetas, test_index)[0] - base)
            gaps.append(abs(change / t - influence) / abs(influence))
        assert gaps[0] < 0.05, gaps
        assert gaps[1] < 0.2 * gaps[0] and gaps[2] < 0.2 * gaps[1], gaps


@pytest.fixture(scope="module")
def iris_mlp(tmp_path_factory):
    task = Iris(IrisConfig(train_steps=300, weight_decay=0.001))
    problem = task.build(BuildContext("cpu", 0, Cache(tmp_path_factory.mktemp("pbrf-iris")), False))
    test_index, _ = select_test_point(problem, "max-loss")
    return task, problem, test_index


def dense_pbrf(problem, removed: int, damping: float) -> torch.Tensor:
    """Newton's method on a dense float64 Hessian of F, written out from the definition (not the harness's code)."""
    p = problem.to(torch.float64)
    theta_star = p.theta.clone()
    n = p.n_train

    def outputs(theta):
        return p.model(p.model_params(theta), p.x_train)

    z_star = outputs(theta_star).detach()
    l_star = p.loss(z_star, p.y_train).detach()
    slope = grad(lambda z: p.loss(z, p.y_train).sum())(z_star).detach()

    def pbrf(theta):
        z = outputs(theta)
        losses = p.loss(z, p.y_train)
        bregman = (losses - l_star - ((z - z_star) * slope).sum(1)).sum() / n
        return (
            bregman
            - (losses[removed] - l_star[removed]) / n
            + 0.5 * (p.weight_decay + damping) * (theta - theta_star).square().sum()
        )

    theta = theta_star.clone()
    for _ in range(30):
        step = torch.linalg.solve(hessian(pbrf)(theta), grad(pbrf)(theta))
        theta = theta - step
        if float(step.norm()) < 1e-14:
            break
    assert float(grad(pbrf)(theta).norm()) < 1e-14
    return theta


def test_iris_pbrf_matches_a_dense_newton_solve(iris_mlp, tmp_path):
    """On a nonlinear MLP the harness's stacked Newton-CG in passes gives the dense solve's test-loss change."""
    task, problem, test_index = iris_mlp
    damping = 1e-2
    truth = PbrfGroundTruth(
        problem, PbrfSolver(damping, rtol=TIGHT), Cache(tmp_path), task.problem_key(0), test_index, chunk_size=3
    )
    removed = [0, 5, 17, 42, 99]
    effects = truth.effects(removed)
    p = problem.to(torch.float64)
    x, y = p.x_test[test_index : test_index + 1], p.y_test[test_index : test_index + 1]
    for m in removed:
        theta = dense_pbrf(problem, m, damping)
        expected = float(p.losses(theta, x, y)[0] - p.losses(p.theta, x, y)[0])
        assert effects[m].loss_change == pytest.approx(expected, rel=1e-7, abs=1e-14), m
        assert effects[m].param_change_norm == pytest.approx(float((theta - p.theta).norm()), rel=1e-7)


@pytest.mark.parametrize("bregman", [True, False])
def test_stacked_models_are_taken_in_groups_that_fit_a_pass(iris_mlp, bregman):
    """K stacked models are taken in groups of ``rows // pass length`` (so that a group holds one pass of ``rows``
    examples' activations): the gradients and the Hessian-vector products are those of all K at once, and each
    model's those it has alone (to rounding: vmap over another number of models may round differently)."""
    _, problem, _ = iris_mlp
    generator = torch.Generator().manual_seed(0)
    models = 5
    p = problem.to(torch.float64)
    thetas = p.theta + 0.01 * torch.randn(models, p.n_params, dtype=torch.float64, generator=generator)
    vectors = torch.randn(models, p.n_params, dtype=torch.float64, generator=generator)
    weights = torch.ones(models, p.n_train, dtype=torch.float64)
    weights[torch.arange(models), torch.tensor([0, 7, 33, 64, 119])] = 0.0
    together = BregmanObjective(problem, 1e-2, rows=models * p.n_train, bregman=bregman)
    grouped = BregmanObjective(problem, 1e-2, rows=2 * p.n_train, bregman=bregman)  # groups of 2, 2 and 1
    expected, expected_product = together.gradient(thetas, weights, vectors)
    got, got_product = grouped.gradient(thetas, weights, vectors)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-16)
    torch.testing.assert_close(got_product, expected_product, rtol=1e-13, atol=1e-16)
    alone, alone_product = grouped.gradient(thetas[1:2], weights[1:2], vectors[1:2])  # 1 was in a group of 2
    torch.testing.assert_close(alone[0], got[1], rtol=1e-13, atol=1e-16)
    torch.testing.assert_close(alone_product[0], got_product[1], rtol=1e-13, atol=1e-16)
    assert grouped.gradient(thetas, weights)[1] is None


def test_pbrf_cache_resumes_and_detects_corruption(iris_mlp, tmp_path):
    task, problem, test_index = iris_mlp
    solver = PbrfSolver(1e-2)

    def fresh():
        return PbrfGroundTruth(problem, solver, Cache(tmp_path), task.problem_key(0), test_index)

    first = fresh()
    effects = first.effects([1, 2, 3])
    assert first.stats.computed == 3 and first.directory.parent.name == "pbrf"
    again = fresh()
    assert again.effects([1, 2, 3, 4])[1] == effects[1]
    assert (again.stats.cached, again.stats.computed) == (3, 1)
    (again.directory / "2.json").write_text("{ not json")
    third = fresh()
    recomputed = third.effects([2])[2]  # alone, where it was solved stacked with two others: the same solve
    assert recomputed.loss_change == pytest.approx(effects[2].loss_change, rel=1e-9)
    assert (third.stats.computed, third.stats.corrupt) == (1, 1)
    # a different damping is a different ground truth: its own entries
    other = PbrfGroundTruth(problem, PbrfSolver(1e-1), Cache(tmp_path), task.problem_key(0), test_index)
    assert other.directory != first.directory


def test_solver_rejects_a_non_positive_damping():
    with pytest.raises(ValueError, match="damping must be positive"):
        PbrfSolver(0.0)


def test_bench_run_truth_pbrf_records(bench, tiny, tmp_path, read_records):
    """``--truth loo,pbrf``: one record per estimator, selection and ground truth; the PBRF ones state the damping and
    how far the solve got, with no drift."""
    results = tmp_path / "results"
    result = bench(
        "run", "--task", "iris", *tiny, "--estimators", "exact,first-order", "--truth", "loo,pbrf,prox",
        "--pbrf-damping", "0.01", "--results-dir", results,
    )  # fmt: skip
    assert result.code == 0, result.err
    found = read_records(results)
    kinds = sorted(
        (r["estimator"]["name"], r["selection"]["kind"], r["ground_truth"].get("kind", "loo")) for r in found
    )
    assert kinds == sorted(
        (name, selection, truth)
        for name in ("exact", "first-order")
        for selection in ("top", "random")
        for truth in ("loo", "pbrf", "prox")
    )
    pbrf = [r for r in found if r["ground_truth"].get("kind") == "pbrf"]
    for record in pbrf:
        gt = record["ground_truth"]
        assert gt["damping"] == 0.01 and gt["reference_drift"] == 0.0 and gt["unsolved"] == 0
        assert gt["worst_gradient_norm"] <= gt["solver"]["rtol"]
        assert record["status"] == "ok" and record["metrics"]["spearman"]["value"] is not None
    exact = next(r for r in pbrf if r["estimator"]["name"] == "exact" and r["selection"]["kind"] == "top")
    assert exact["metrics"]["spearman"]["value"] > 0.8
    assert "(pbrf)" in result.out
    json.dumps(found)  # records stay JSON
    board = bench("leaderboard", "--task", "iris", "--results-dir", results, "--output-dir", tmp_path)
    assert board.code == 0, board.err
    text = (tmp_path / "iris.md").read_text()
    assert "proximal Bregman response" in text and "damping 0.01" in text
    side = text.split("## Ground truths side by side", 1)[1].split("\n## ", 1)[0]
    exact_row = next(line for line in side.splitlines() if line.startswith("| `exact`"))
    loo_top = next(
        r
        for r in found
        if r["estimator"]["name"] == "exact"
        and r["selection"]["kind"] == "top"
        and r is not exact
        and r["ground_truth"].get("kind", "loo") == "loo"
    )
    assert "PBRF (top k) Spearman" in side and "proximal leave-one-out (top k) Spearman" in side and "LDS" not in side
    assert "proximal leave-one-out" in text and "(prox)" in result.out
    assert f"{loo_top['metrics']['spearman']['value']:.3f}" in exact_row
    assert f"{exact['metrics']['spearman']['value']:.3f}" in exact_row


def test_bad_pbrf_damping_is_one_line(bench, tiny):
    result = bench("run", "--task", "iris", *tiny, "--truth", "pbrf", "--pbrf-damping", "-1")
    assert_one_line_error(result, "pbrf_damping", "-1", "a positive number")
    result = bench("run", "--task", "iris", *tiny, "--truth", "pbrf,bogus")
    assert_one_line_error(result, "bogus", "pbrf")


def test_bench_gt_truth_pbrf_and_status(bench, tiny, tmp_path):
    where = ("--cache-dir", tmp_path / "cache")
    result = bench("gt", "--task", "iris", *tiny, "--truth", "pbrf", "--points", "6", *where)
    assert result.code == 0, result.err
    assert "pbrf damping 0.001: 6 points" in result.out and "6 computed" in result.out
    assert not (tmp_path / "cache" / "loo").exists()  # PBRF re-trains nothing
    status = bench("gt", "--status", *where)
    assert status.code == 0, status.err
    assert "proximal Bregman response under" in status.out
    row = next(line for line in status.out.splitlines() if line.startswith("|") and "iris" in line)
    assert "0.001" in row and "|         6 |" in row


def test_process_pool_pbrf_equals_local(bench, tiny, tmp_path, read_records):
    """Worker processes compute the same PBRF entries as this process (the shards are solved apart, and a solved
    model takes no step after it converged, so the stacking does not change it beyond rounding)."""
    run = ("run", "--task", "iris", *tiny, "--estimators", "exact", "--selections", "random", "--truth", "pbrf")
    local = bench(*run, "--cache-dir", tmp_path / "c1", "--results-dir", tmp_path / "local")
    pooled = bench(
        *run,
        "--executor",
        "process",
        "--workers",
        "2",
        "--cache-dir",
        tmp_path / "c2",
        "--results-dir",
        tmp_path / "pool",
    )
    assert local.code == 0 and pooled.code == 0, (local.err, pooled.err)
    (a,), (b,) = read_records(tmp_path / "local"), read_records(tmp_path / "pool")
    assert b["ground_truth"]["executor"] == "process" and b["ground_truth"]["computed"] == 20
    assert b["metrics"]["spearman"]["value"] == pytest.approx(a["metrics"]["spearman"]["value"], abs=1e-9)
    assert b["points"]["train_indices"] == a["points"]["train_indices"]
    assert b["points"]["retrained"] == pytest.approx(a["points"]["retrained"], rel=1e-6)


# -- the proximal leave-one-out response (--truth prox) ---------------------------------------------------------------
def test_prox_equals_pbrf_on_a_linear_model_at_its_optimum(logistic, tmp_path):
    """For a model linear in theta at an exact optimum the Bregman divergence of the objective is the objective less
    its value and (zero) slope at theta*: the two responses coincide, and the proximal reference does not move."""
    task, problem, test_index = logistic
    solver = PbrfSolver(1e-3, rtol=TIGHT)
    pbrf = PbrfGroundTruth(problem, solver, Cache(tmp_path), task.problem_key(0), test_index).effects(REMOVED)
    prox_truth = ProximalGroundTruth(problem, solver, Cache(tmp_path), task.problem_key(0), test_index)
    prox = prox_truth.effects(REMOVED)
    assert prox_truth.directory.parent.name == "prox"
    assert abs(prox_truth.reference().drift) < 1e-12
    for m in REMOVED:
        assert prox[m].loss_change == pytest.approx(pbrf[m].loss_change, rel=1e-6, abs=1e-12), m


def test_iris_prox_matches_a_dense_newton_solve(iris_mlp, tmp_path):
    """On the (not exactly stationary) Iris MLP: the minimiser of J_-m + (lambda/2)||theta - theta*||^2 against the
    minimiser with nothing removed, both by Newton's method on a dense float64 Hessian."""
    task, problem, test_index = iris_mlp
    damping = 1e-2
    truth = ProximalGroundTruth(
        problem, PbrfSolver(damping, rtol=TIGHT), Cache(tmp_path), task.problem_key(0), test_index, chunk_size=2
    )
    removed = [0, 17, 99]
    effects = truth.effects(removed)
    p = problem.to(torch.float64)
    theta_star = p.theta.clone()
    x, y = p.x_test[test_index : test_index + 1], p.y_test[test_index : test_index + 1]

    def solve(weights):
        def objective(theta):
            losses = p.losses(theta, p.x_train, p.y_train)
            return (
                (losses * weights).sum() / p.n_train
                + 0.5 * p.weight_decay * theta.dot(theta)
                + 0.5 * damping * (theta - theta_star).square().sum()
            )

        theta = theta_star.clone()
        for _ in range(30):
            theta = theta - torch.linalg.solve(hessian(objective)(theta), grad(objective)(theta))
        assert float(grad(objective)(theta).norm()) < 1e-13
        return float(p.losses(theta, x, y)[0])

    reference = solve(torch.ones(p.n_train, dtype=torch.float64))
    assert truth.reference().test_loss == pytest.approx(reference, rel=1e-9)
    for m in removed:
        weights = torch.ones(p.n_train, dtype=torch.float64)
        weights[m] = 0.0
        # a difference of two solves, each to 1e-8 of its own starting gradient: the reference starts far from
        # stationary here (300 training steps), so its absolute error bounds the effect's (a few 1e-11)
        assert effects[m].loss_change == pytest.approx(solve(weights) - reference, rel=1e-6, abs=1e-9), m


def test_bench_list_names_every_ground_truth(bench):
    result = bench("list")
    assert result.code == 0
    section = result.out.split("ground truths (--truth):", 1)[1]
    names = [line.split()[0] for line in section.splitlines() if line.startswith("  ")]
    assert names == ["loo", "lds", "pbrf", "loo-scratch", "prox"]
