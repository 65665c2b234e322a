"""The linear datamodeling ground truth (``benchmark.groundtruth.lds``) and its score
(``benchmark.evaluation.scoring.datamodeling_score``): subset models against an independent solver on a convex
problem, the additive group prediction, the cache, the noise ceiling and the undefined cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from benchmark import Recipe
from benchmark.common.cache import Cache, digest
from benchmark.contracts import testing as conformance
from benchmark.evaluation.estimation import Evaluation, influence_rows
from benchmark.evaluation.scoring import datamodeling_score, subset_predictions
from benchmark.groundtruth import lds
from benchmark.numerics.trajectory import TrainingRun
from estimators.exact import Exact
from tests.conftest import assert_one_line_error

KEY = {"task": "test-lds", "version": 1, "seed": 0, "config": {}}


def convex_problem(n_train: int = 60):
    """Logistic regression at its Newton optimum, with a training run (full-batch gradient descent from zero, which
    reaches the optimum of any subset's objective to rounding) that can train models from scratch."""
    problem = conformance.logistic_regression_problem(n_train=n_train, n_test=20)
    zero = torch.zeros_like(problem.theta)
    run = TrainingRun(problem, [Recipe(steps=2000, lr=1.0)], initialize=lambda seed: zero, optimum=problem.theta)
    return dataclasses.replace(problem, training_run=run)


def test_subsets_are_fixed_by_the_design_alone_and_prefixes_of_larger_designs():
    design = lds.SubsetDesign(subsets=5, fraction=0.5, seed=0)
    masks = design.masks(60)
    assert masks.shape == (5, 60) and masks.sum(dim=1).tolist() == [30] * 5
    assert torch.equal(lds.SubsetDesign(subsets=8, fraction=0.5, seed=0).masks(60)[:5], masks)
    assert not torch.equal(lds.SubsetDesign(subsets=5, fraction=0.5, seed=1).masks(60), masks)
    assert len({tuple(row.tolist()) for row in masks}) == 5
    with pytest.raises(ValueError, match="subsets=2"):
        lds.SubsetDesign(subsets=2)
    with pytest.raises(ValueError, match="fraction=1.0"):
        lds.SubsetDesign(fraction=1.0)


def test_subset_models_are_the_subsets_own_optima_and_the_losses_match_an_independent_solver(tmp_path):
    problem = convex_problem()
    design = lds.SubsetDesign(subsets=6, fraction=0.5)
    truth = lds.SubsetGroundTruth(problem, design, Cache(tmp_path), KEY)
    test_points = [0, 3, 7]
    losses = truth.test_losses(test_points)
    assert losses.shape == (6, 3) and truth.stats.computed == 6
    for m in range(6):
        weights = torch.zeros(problem.n_train, dtype=problem.dtype)
        weights[design.kept(problem.n_train, m)] = problem.n_train / 30  # the subset's mean loss
        theta = conformance.newton(problem, weights)
        torch.testing.assert_close(truth._load(m), theta, rtol=0, atol=1e-8)
        torch.testing.assert_close(losses[m], problem.test_losses(theta)[test_points], rtol=0, atol=1e-8)


def test_exact_influence_has_a_high_datamodeling_score_on_a_convex_problem(tmp_path):
    problem = convex_problem(n_train=80)
    design = lds.SubsetDesign(subsets=40, fraction=0.5)
    test_points = list(range(problem.x_test.shape[0]))
    measured = torch.stack(
        [lds.SubsetGroundTruth(problem, design, Cache(tmp_path), KEY).test_losses(test_points)]
    ).numpy()
    estimator = Exact()
    estimator.prepare(problem)
    scores = estimator.influence(test_points).numpy()
    result = datamodeling_score(scores, design.masks(problem.n_train).numpy(), measured, resamples=200)
    assert result["spearman"]["value"] > 0.9, result["spearman"]
    low, high = result["spearman"]["interval"]
    assert low <= result["spearman"]["value"] <= high
    assert result["spearman"]["n"] == len(test_points) and not result["undefined_points"]
    assert result["ceiling"]["spearman"]["undefined"].startswith("one ground-truth seed")
    # the per-point values are the rank correlations computed directly
    predicted = subset_predictions(scores, design.masks(problem.n_train).numpy())
    direct = [stats.spearmanr(predicted[:, t], measured[0, :, t])[0] for t in range(len(test_points))]
    np.testing.assert_allclose(result["per_point"], direct, rtol=0, atol=1e-12)
    # a random estimator scores near zero
    noise = np.random.default_rng(0).standard_normal(scores.shape)
    assert abs(datamodeling_score(noise, design.masks(80).numpy(), measured, resamples=50)["spearman"]["value"]) < 0.3


@pytest.mark.parametrize(("query_rows", "calls"), [(64, [64, 64, 2]), (None, [130]), (200, [130])])
def test_many_test_points_are_queried_in_the_estimators_own_batches(query_rows, calls):
    problem = conformance.logistic_regression_problem(n_train=30, n_test=130)
    sizes = []

    class Counting(Exact):
        name = "counting"

        def influence(self, test_indices):
            sizes.append(len(test_indices))
            return super().influence(test_indices)

    Counting.query_rows = query_rows
    estimator = Counting()
    estimator.prepare(problem)
    evaluation = Evaluation(estimator, "test", {})
    rows, failure = influence_rows(evaluation, problem, list(range(130)))
    assert failure is None and sizes == calls
    expected = Exact()
    expected.prepare(problem)
    np.testing.assert_allclose(rows, expected.influence(list(range(130))).double().numpy(), rtol=1e-12, atol=0)
    assert evaluation.timings["lds_query_s"] > 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_query_rows_that_is_no_positive_integer_is_a_contract_problem(bad):
    class Misdeclared(Exact):
        name = "misdeclared"

    Misdeclared.query_rows = bad
    assert Misdeclared.contract_problems() == [
        f"Misdeclared.query_rows must be a positive integer or None, not {bad!r}"
    ]


def test_the_group_prediction_is_the_sum_over_the_points_left_out():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 10))
    masks = rng.random((5, 10)) < 0.5
    predicted = subset_predictions(scores, masks)
    for m in range(5):
        for t in range(3):
            assert predicted[m, t] == pytest.approx(scores[t, ~masks[m]].sum(), abs=1e-12)
    # additive: the prediction of leaving out A and B is A's plus B's
    a, b = np.zeros((1, 10), dtype=bool), np.zeros((1, 10), dtype=bool)
    a[0, :4], b[0, 4:] = True, True  # a keeps 0-3 (leaves out 4-9), b keeps 4-9
    both = np.zeros((1, 10), dtype=bool)  # keeps nothing: leaves out everything
    np.testing.assert_allclose(
        subset_predictions(scores, both), subset_predictions(scores, a) + subset_predictions(scores, b), atol=1e-12
    )


def test_constant_responses_are_undefined_with_their_reason():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 12))
    masks = rng.random((6, 12)) < 0.5
    measured = rng.standard_normal((1, 6, 2))
    measured[:, :, 1] = 0.25  # test point 1: every subset model has the same loss
    result = datamodeling_score(scores, masks, measured, resamples=20)
    assert result["per_point"][1] is None and "constant" in result["undefined_points"][1]
    assert result["spearman"]["n"] == 1
    measured[:, :, 0] = 0.5
    result = datamodeling_score(scores, masks, measured, resamples=20)
    assert result["spearman"]["value"] is None and "every test point" in result["spearman"]["undefined"]
    with pytest.raises(ValueError, match="expected"):
        datamodeling_score(scores, masks, measured[:, :4])


def test_two_training_seeds_give_a_noise_ceiling():
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((30, 4))
    measured = np.stack([signal + 0.3 * rng.standard_normal((30, 4)) for _ in range(2)])
    scores = rng.standard_normal((4, 20))
    masks = rng.random((30, 20)) < 0.5
    ceiling = datamodeling_score(scores, masks, measured, resamples=20)["ceiling"]["spearman"]
    assert ceiling["seeds"] == 2 and 0.8 < ceiling["agreement"] < 1.0 and ceiling["value"] > ceiling["agreement"]


def test_models_are_cached_one_by_one_and_a_corrupt_one_is_trained_again(tmp_path):
    problem = convex_problem(n_train=30)
    design = lds.SubsetDesign(subsets=4)
    cache = Cache(tmp_path)
    first = lds.SubsetGroundTruth(problem, design, cache, KEY).test_losses([0, 1])
    again = lds.SubsetGroundTruth(problem, design, cache, KEY)
    torch.testing.assert_close(again.test_losses([0, 1]), first, rtol=0, atol=0)
    assert (again.stats.cached, again.stats.computed) == (4, 0)
    blob = (tmp_path / lds.KIND / digest(again.entry_key(2))).with_suffix(".pt")
    blob.write_bytes(b"not a tensor file")
    repaired = lds.SubsetGroundTruth(problem, design, cache, KEY)
    torch.testing.assert_close(repaired.test_losses([0, 1]), first, rtol=0, atol=1e-12)
    assert (repaired.stats.computed, repaired.stats.corrupt) == (1, 1)
    larger = lds.SubsetGroundTruth(problem, lds.SubsetDesign(subsets=6), cache, KEY)
    larger.test_losses([0])
    assert larger.stats.computed == 2  # only the two subsets the smaller design lacked
    other_seed = lds.SubsetGroundTruth(problem, design, cache, KEY, train_seed=1)
    assert other_seed.missing() == [0, 1, 2, 3]


def test_a_task_without_an_initialisation_has_no_subset_models(tmp_path):
    problem = conformance.logistic_regression_problem()
    with pytest.raises(NotImplementedError, match="initial_parameters"):
        lds.SubsetGroundTruth(problem, lds.SubsetDesign(), Cache(tmp_path), KEY)


# -- bench run --truth lds and bench gt ------------------------------------------------------------------------------
LDS_RUN = ("--lds-subsets", "6", "--lds-test-points", "5", "--gt-chunk-size", "3", "--no-leaderboard")


def test_bench_run_scores_both_ground_truths_and_the_second_run_trains_nothing(bench, tiny, tmp_path, read_records):
    from benchmark.contracts import records

    run = ("run", "--task", "iris", *tiny, "--estimators", "exact,first-order", "--selection", "top", *LDS_RUN)
    where = ("--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "results")
    result = bench(*run, "--truth", "loo,lds", "--gt-seeds", "2", *where)
    assert result.code == 0, result.err
    written = read_records(tmp_path / "results")
    assert all(records.validate(record) is None for record in written)
    lds_records = {r["estimator"]["name"]: r for r in written if r["selection"]["kind"] == "lds"}
    assert sorted(lds_records) == ["exact", "first-order"] and len(written) == 4
    exact = lds_records["exact"]
    gt = exact["ground_truth"]
    assert (gt["kind"], gt["subsets"], gt["fraction"], gt["seeds"], gt["test_points"]) == ("lds", 6, 0.5, 2, 5)
    assert gt["computed"] == 12 and gt["cached"] == 0 and gt["models_per_minute"] > 0
    details = exact["metrics"]["lds"]
    assert len(details["test_indices"]) == 5 and len(details["per_point"]) == 5
    defined = [v for v in details["per_point"] if v is not None]
    assert exact["metrics"]["spearman"]["value"] == pytest.approx(np.mean(defined))
    assert exact["metrics"]["ceiling"]["spearman"]["seeds"] == 2
    assert exact["timings"]["lds_query_s"] > 0
    again = bench(*run, "--truth", "lds", "--gt-seeds", "2", *where, "--results-dir", tmp_path / "again")
    assert again.code == 0, again.err
    (repeat, _) = sorted(read_records(tmp_path / "again"), key=lambda r: r["estimator"]["name"])
    assert repeat["ground_truth"]["computed"] == 0 and repeat["ground_truth"]["cached"] == 12
    assert repeat["metrics"]["spearman"] == exact["metrics"]["spearman"]
    board = bench("leaderboard", "--task", "iris", "--results-dir", tmp_path / "results", "--output-dir", tmp_path)
    assert board.code == 0, board.err
    text = (tmp_path / "iris.md").read_text()
    assert "linear datamodeling score" in text and "| lds 6 " in text and "| top 20 " in text
    side = text.split("## Ground truths side by side", 1)[1].split("\n## ", 1)[0]
    exact_row = next(line for line in side.splitlines() if line.startswith("| `exact`"))
    loo_top = next(r for r in written if r["estimator"]["name"] == "exact" and r["selection"]["kind"] == "top")
    assert f"{loo_top['metrics']['spearman']['value']:.3f}" in exact_row
    assert f"{exact['metrics']['spearman']['value']:.3f}" in exact_row


def test_bench_gt_trains_subset_models_and_status_lists_them(bench, tiny, tmp_path):
    where = ("--cache-dir", tmp_path / "cache")
    result = bench("gt", "--task", "iris", *tiny, "--truth", "lds", "--lds-subsets", "4", *where)
    assert result.code == 0, result.err
    assert "4 subset models of 0.5 of the training set: 0 cached, 4 trained" in result.out
    status = bench("gt", "--status", *where)
    assert status.code == 0, status.err
    assert "linear-datamodeling subset models" in status.out and "|        4 |" in status.out


def test_subset_models_from_worker_processes_are_the_local_ones(bench, tiny, tmp_path, read_records):
    run = ("run", "--task", "iris", *tiny, "--estimators", "exact", "--truth", "lds", *LDS_RUN)
    local = bench(*run, "--cache-dir", tmp_path / "a", "--results-dir", tmp_path / "ra")
    pooled = bench(
        *run, "--executor", "process", "--workers", "2", "--cache-dir", tmp_path / "b", "--results-dir", tmp_path / "rb"
    )
    assert local.code == 0 and pooled.code == 0, (local.err, pooled.err)
    (a,), (b,) = read_records(tmp_path / "ra"), read_records(tmp_path / "rb")
    assert b["ground_truth"]["executor"] == "process" and b["ground_truth"]["computed"] == 6
    assert b["metrics"] == a["metrics"]


def test_bad_ground_truth_settings_are_one_line_errors(bench, tiny, tmp_path):
    run = ("run", "--task", "iris", *tiny, "--estimators", "exact")
    assert_one_line_error(bench(*run, "--truth", "loo,lsd"), "unknown ground truth 'lsd'", "lds, loo")
    assert_one_line_error(bench(*run, "--truth", "lds", "--lds-fraction", "1.5"), "lds_fraction", "1.5", "between")
    assert_one_line_error(bench(*run, "--truth", "lds", "--lds-subsets", "2"), "lds_subsets", "2", "at least 3")
    result = bench("run", "--task", "imagenet", "--estimators", "first-order", "--truth", "lds", "--no-progress")
    assert_one_line_error(result, "'imagenet'", "initial_parameters", "iris")


def test_a_reference_stated_for_some_hyperparameters_goes_only_to_runs_with_them(tmp_path):
    from benchmark.contracts.plugins import Registry, plugin_manager
    from benchmark.contracts.run_config import RunConfig
    from benchmark.evaluation.runner import Run

    pm = plugin_manager()
    config = RunConfig(task="iris", estimators=["trak"], cache_dir=tmp_path / "cache", results_dir=tmp_path / "r")
    run = Run(config, Registry(pm), pm)
    published = {"spearman": 0.68, "source": "dattri, TRAK-50", "when": {"models": 50}}
    run.task.paper_reference = lambda estimator, selection: dict(published)  # type: ignore[method-assign]
    (evaluation,) = run.estimators
    assert evaluation.hyperparameters["models"] == 1 and run.reference(evaluation, "lds") is None
    evaluation.hyperparameters["models"] = 50
    assert run.reference(evaluation, "lds") == {"spearman": 0.68, "source": "dattri, TRAK-50"}
