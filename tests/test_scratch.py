"""Leave-one-out from scratch (``--truth loo-scratch``): each entry is the difference of two models trained from the
same initialisation and minibatches, one without the removed point; cached, resumable, recorded apart."""

from __future__ import annotations

import pytest
import torch

from benchmark.common.cache import Cache
from benchmark.contracts.task import BuildContext
from benchmark.evaluation.selections import select_test_point
from benchmark.groundtruth.scratch import ScratchGroundTruth
from tasks.iris import Iris, IrisConfig
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    task = Iris(IrisConfig(train_steps=300))
    problem = task.build(BuildContext("cpu", 0, Cache(tmp_path_factory.mktemp("scratch-iris")), False))
    test_index, _ = select_test_point(problem, "max-loss")
    return task, problem, test_index


def test_entries_are_differences_of_models_trained_from_scratch(iris, tmp_path):
    task, problem, test_index = iris
    truth = ScratchGroundTruth(problem, Cache(tmp_path), task.problem_key(0), test_index, train_seed=1, chunk_size=2)
    effects = truth.effects([3, 11, 40])
    run = problem.training_run
    weights = torch.ones(2, problem.n_train, dtype=problem.dtype)
    weights[1, 11] = 0.0
    full, without = run.train_from_scratch(weights, truth.model_seed)
    x, y = problem.x_test[test_index : test_index + 1], problem.y_test[test_index : test_index + 1]
    expected = float(problem.losses(without, x, y)[0] - problem.losses(full, x, y)[0])
    assert effects[11].loss_change == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert truth.reference().test_loss == pytest.approx(float(problem.losses(full, x, y)[0]), rel=1e-6)
    # the seed is an initialisation of its own; a second seed's entries are other entries
    other = ScratchGroundTruth(problem, Cache(tmp_path), task.problem_key(0), test_index, train_seed=0)
    assert other.directory != truth.directory and other.model_seed != truth.model_seed
    again = ScratchGroundTruth(problem, Cache(tmp_path), task.problem_key(0), test_index, train_seed=1)
    assert again.effects([3, 11, 40]) == effects and again.stats.computed == 0 and again.stats.cached == 3
    assert truth.directory.parent.name == "loo-scratch"


def test_bench_run_loo_scratch_records(bench, tiny, tmp_path, read_records):
    results = tmp_path / "results"
    result = bench(
        "run", "--task", "iris", *tiny, "--estimators", "exact", "--selections", "top", "--truth", "loo,loo-scratch",
        "--set", "iris.eval_fraction=0.05", "--gt-seeds", "2", "--results-dir", results,
    )  # fmt: skip
    assert result.code == 0, result.err
    found = {r["ground_truth"].get("kind", "loo"): r for r in read_records(results)}
    assert set(found) == {"loo", "loo-scratch"}
    scratch = found["loo-scratch"]["ground_truth"]
    assert scratch["seeds"] == 2 and scratch["computed"] == 12 and scratch["drift_to_effect"] is None
    assert sum(phase["steps"] for phase in scratch["phases"]) > 0 and "from scratch" in scratch["protocol"]
    assert found["loo-scratch"]["points"]["train_indices"] == found["loo"]["points"]["train_indices"]
    assert "(loo-scratch)" in result.out


def test_loo_scratch_needs_an_initialisation(bench, tmp_path, repo_root):
    result = bench(
        "-p", "examples.logistic_task", "run", "--task", "logistic", "--truth", "loo-scratch", "--no-progress",
        "--results-dir", tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "'loo-scratch'", "from scratch", "initial_parameters")


def test_bench_gt_loo_scratch_and_status(bench, tiny, tmp_path):
    where = ("--cache-dir", tmp_path / "cache")
    result = bench("gt", "--task", "iris", *tiny, "--truth", "loo-scratch", "--points", "3", *where)
    assert result.code == 0, result.err
    assert "from scratch, seed 0: 3 points" in result.out and "3 computed" in result.out
    status = bench("gt", "--status", *where)
    assert status.code == 0, status.err
    assert "leave-one-out from scratch under" in status.out
    row = next(line for line in status.out.splitlines() if "steps from scratch, seed 0" in line)
    assert "|         3 |" in row
