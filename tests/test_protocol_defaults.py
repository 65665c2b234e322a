"""A task's protocol settings reach the estimators (issue 18, item 6): the protocol damping of the vision tasks, the
estimators' declared damping field, skipped estimators, drift-dominated ground truth, and the leaderboard cells of
an estimator without an iHVP."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from benchmark import Estimator, EstimatorFailed, EstimatorSkipped, Protocol, Recipe
from benchmark.cli import leaderboard as leaderboard_command
from benchmark.common.config import non_negative
from benchmark.contracts import records
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.run_config import RunConfig
from benchmark.evaluation import leaderboard
from benchmark.evaluation.estimation import resolve_hyperparameters
from benchmark.evaluation.runner import Run
from estimators.cg import CGConfig, ConjugateGradient
from estimators.exact import Exact, ExactConfig
from estimators.first_order import FirstOrder
from estimators.lissa import Lissa
from tasks.vision import Cifar, Mnist
from tests.conftest import REPO_ROOT

SMOKE = (
    "--set",
    "mnist.preset=smoke",
    "--estimator",
    "cg,lissa,first-order",
    "--set",
    "lissa.depth=50",
    "--selection",
    "top",
    "--no-progress",
    "--no-leaderboard",
)
PROTOCOL = Protocol(test_point="max-loss", eval_size=4, retrain=Recipe(steps=1, lr=0.1), damping=0.01)
TEMPLATE = sorted((REPO_ROOT / "leaderboards" / "results" / "iris").glob("*-exact-top.json"))[0]


def _hyperparameters(found: list[dict]) -> dict[str, dict]:
    return {r["estimator"]["name"]: r["estimator"]["hyperparameters"] for r in found}


# -- (a) the protocol damping ----------------------------------------------------------------------------------------
def test_vision_smoke_run_records_the_protocol_damping_and_a_set_overrides_it(bench, tmp_path, read_records):
    results = tmp_path / "results"
    common = ("--cache-dir", tmp_path / "cache", "--results-dir", results)
    result = bench("run", "--task", "mnist", *SMOKE, *common)
    assert result.code == 0, result.err
    found = _hyperparameters(read_records(results, "mnist"))
    assert found["cg"]["damping"] == 0.01 and found["lissa"]["damping"] == 0.01  # the defaults are 0.001
    assert found["first-order"] == {"scale": 1.0, "layers": "all"}  # declares no damping: nothing added

    override = tmp_path / "override"
    result = bench(
        "run",
        "--task",
        "mnist",
        *SMOKE,
        "--set",
        "cg.damping=0.05",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        override,
    )
    assert result.code == 0, result.err
    found = _hyperparameters(read_records(override, "mnist"))
    assert found["cg"]["damping"] == 0.05 and found["lissa"]["damping"] == 0.01


def test_yaml_section_overrides_the_protocol_damping(tmp_path):
    registry = Registry(plugin_manager([]))
    config = RunConfig(
        task="cifar",
        estimators=["cg", "lissa", "exact"],
        task_options={"preset": "smoke"},
        estimator_options={"lissa": {"damping": 0.2}},
        cache_dir=tmp_path / "c",
        results_dir=tmp_path / "r",
    )
    run = Run(config, registry, registry.pm)
    assert {e.estimator.name: e.estimator.damping for e in run.estimators} == {"cg": 0.01, "lissa": 0.2, "exact": 0.01}


def test_vision_tasks_state_the_protocol_damping_and_iris_none():
    assert Mnist().protocol().damping == 0.01 and Cifar().protocol().damping == 0.01
    registry = Registry(plugin_manager([]))
    assert registry.task("iris")().protocol().damping is None


def test_iris_keeps_the_estimator_defaults(bench, tiny, tmp_path, read_records):
    results = tmp_path / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        *tiny,
        "--estimator",
        "exact,cg,lissa",
        "--selection",
        "top",
        "--set",
        "lissa.depth=20",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
        "--no-leaderboard",
    )
    assert result.code == 0, result.err
    found = _hyperparameters(read_records(results, "iris"))
    defaults = {"exact": ExactConfig().damping, "cg": CGConfig().damping, "lissa": 0.001}
    assert (
        {name: values["damping"] for name, values in found.items()}
        == defaults
        == {"exact": 0.001, "cg": 0.001, "lissa": 0.001}
    )


def test_builtins_declare_their_damping_field():
    assert [cls.damping_field for cls in (Exact, ConjugateGradient, Lissa, FirstOrder)] == [
        "damping",
        "damping",
        "damping",
        None,
    ]
    assert ConjugateGradient(CGConfig(damping=0.3)).damping == 0.3
    assert FirstOrder().damping == 0.0


@dataclasses.dataclass
class LambdaConfig:
    lam: float = 0.5
    damping: float = 7.0  # a field of that name means nothing without the declaration

    def __post_init__(self) -> None:
        non_negative(lam=self.lam)


class Declared(Estimator):
    name = "declared"
    Config = LambdaConfig
    damping_field = "lam"

    def ihvp(self, vectors):
        return vectors


class Undeclared(Declared):
    name = "undeclared"
    damping_field = None


class Declining(Declared):
    name = "declining"

    @classmethod
    def protocol_options(cls, protocol):
        return {}


def test_the_damping_is_the_declared_field_not_a_field_named_damping():
    assert resolve_hyperparameters(Declared, None, PROTOCOL, "declared") == LambdaConfig(lam=0.01, damping=7.0)
    assert Declared(LambdaConfig(lam=0.25)).damping == 0.25
    assert resolve_hyperparameters(Declared, {"lam": 0.3}, PROTOCOL, "declared").lam == 0.3  # the user's wins
    assert resolve_hyperparameters(Undeclared, None, PROTOCOL, "undeclared") == LambdaConfig()
    assert Undeclared().damping == 0.0
    assert resolve_hyperparameters(Declining, None, PROTOCOL, "declining") == LambdaConfig()  # its own choice
    no_damping = dataclasses.replace(PROTOCOL, damping=None)
    assert resolve_hyperparameters(Declared, None, no_damping, "declared") == LambdaConfig()


def test_a_damping_field_that_is_no_config_field_is_a_contract_problem():
    class Misnamed(Declared):
        name = "misnamed"
        damping_field = "lambda_"

    assert Misnamed.contract_problems() == [
        "Misnamed.damping_field 'lambda_' is not a field of its Config (fields: lam, damping)"
    ]
    assert Declared.contract_problems() == []


def test_a_protocol_damping_out_of_range_is_one_line_naming_the_estimator():
    from benchmark.common.errors import UsageError

    with pytest.raises(UsageError, match=r"^bad value for declared: lam must be >= 0, got -1"):
        resolve_hyperparameters(Declared, None, dataclasses.replace(PROTOCOL, damping=-1.0), "declared")


# -- (b) skipped estimators ------------------------------------------------------------------------------------------
def test_exact_above_max_params_is_skipped_not_failed(bench, tiny, tmp_path, read_records):
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        *tiny,
        "--estimator",
        "exact,first-order",
        "--selection",
        "top",
        "--set",
        "exact.max_params=10",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    by_name = {r["estimator"]["name"]: r for r in read_records(results, "iris")}
    skipped = by_name["exact"]
    assert skipped["status"] == "skipped"
    assert skipped["failure"].startswith("43 parameters exceed exact.max_params=10")
    assert records.validate(skipped) is None
    assert by_name["first-order"]["status"] == "ok"
    assert "| skipped: 43 parameters exceed exact.max_params=10" in result.out  # this run's summary
    assert "failed" not in result.err
    board = (tmp_path / "board" / "iris.md").read_text()
    assert "| skipped: 43 parameters exceed exact.max_params=10" in board
    assert "*status* `skipped: reason` = the estimator does not apply to this problem" in board


def test_a_run_where_every_estimator_is_skipped_exits_1(bench, tiny, tmp_path, read_records):
    results = tmp_path / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        *tiny,
        "--estimator",
        "exact",
        "--set",
        "exact.max_params=10",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
        "--no-leaderboard",
    )
    assert result.code == 1
    assert result.err.splitlines()[-1] == "bench: error: no estimator produced a score: all 2 records were skipped"
    assert [r["status"] for r in read_records(results, "iris")] == ["skipped", "skipped"]


def test_exact_raises_estimator_skipped_from_prepare():
    from benchmark.contracts.testing import logistic_regression_problem

    problem = logistic_regression_problem()
    with pytest.raises(EstimatorSkipped, match=f"^{problem.n_params} parameters exceed exact.max_params=1 ") as skip:
        Exact(ExactConfig(max_params=1)).prepare(problem)
    assert isinstance(skip.value, EstimatorFailed)  # what code catching refusals (asv's "declined") catches


def test_schema_accepts_skipped_and_still_rejects_other_statuses():
    record = json.loads(TEMPLATE.read_text())
    assert records.validate(record) is None
    assert records.validate({**record, "status": "skipped", "metrics": None}) is None
    assert records.validate({**record, "status": "declined"}) == (
        "status: expected one of 'ok', 'failed', 'skipped', got \"declined\""
    )


def test_committed_records_render_as_before(tmp_path):
    """Old records (ok and failed only) load strictly and render the committed Iris leaderboard byte for byte."""
    assert records.load(REPO_ROOT / "leaderboards" / "results", "iris", strict=True)
    registry = Registry(plugin_manager([]))
    # as `bench leaderboard --publish` renders them: with the task's and the estimators' current defaults
    results = REPO_ROOT / "leaderboards" / "results"
    ((text, _, _),) = leaderboard_command.render(registry, results, tmp_path, "iris", strict=True)
    assert text == (REPO_ROOT / "leaderboards" / "iris.md").read_text()


# -- (c) drift-dominated ground truth --------------------------------------------------------------------------------
def test_a_drift_dominated_run_warns_and_its_leaderboard_section_says_so(bench, tmp_path):
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        "--set",
        "iris.train_steps=20",
        "--set",
        "iris.retrain_steps=200",
        "--no-progress",
        "--estimator",
        "first-order",
        "--selection",
        "top",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )  # 20 training steps: far from stationary
    assert result.code == 0, result.err
    record = json.loads(next((results / "iris").glob("*.json")).read_text())
    ratio = record["ground_truth"]["drift_to_effect"]
    assert ratio > records.DRIFT_DOMINATED
    warning = [line for line in result.err.splitlines() if "drift-dominated ground truth" in line]
    assert warning == [
        f"bench: drift-dominated ground truth: the reference drift is {ratio:.3g}x the median "
        "|leave-one-out effect| (threshold 10): the re-training recipe moves the model more than "
        "removing a point does, so the correlations measure mostly drift, not influence (is the "
        "optimum stationary?)"
    ]
    board = (tmp_path / "board" / "iris.md").read_text()
    headers = [line for line in board.splitlines() if line.startswith("## ") and "train_steps=20," in line]
    assert len(headers) == 1 and headers[0].endswith(" · **drift-dominated ground truth**")
    assert f"- **Drift-dominated ground truth** (drift {ratio:.2g} x the median" in board


def test_a_run_near_a_stationary_point_has_no_drift_warning(bench, tmp_path):
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        "--set",
        "iris.train_steps=3000",
        "--set",
        "iris.retrain_steps=20",
        "--no-progress",
        "--estimator",
        "first-order",
        "--selection",
        "top",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    record = json.loads(next((results / "iris").glob("*.json")).read_text())
    assert record["ground_truth"]["drift_to_effect"] < 1  # measured 0.04
    assert "drift-dominated" not in result.err
    assert "drift-dominated" not in (tmp_path / "board" / "iris.md").read_text().lower()


def test_drift_threshold_is_strictly_above_ten():
    assert records.DRIFT_DOMINATED == 10.0
    assert records.drift_dominated({"drift_to_effect": 10.0}) is None
    assert records.drift_dominated({"drift_to_effect": 10.5}) == 10.5
    assert records.drift_dominated({"drift_to_effect": None}) is None
    assert records.drift_dominated({}) is None  # records older than the ratio
    assert [records.is_drift_dominated(r) for r in (None, float("nan"), 10.0, 10.5)] == [False, False, False, True]


# -- (d) an estimator without an iHVP in the leaderboard -------------------------------------------------------------
def test_leaderboard_shows_n_a_with_the_reason_for_an_estimator_without_an_ihvp():
    record = json.loads(TEMPLATE.read_text())
    record = copy.deepcopy(record)
    reason = "n/a: estimator 'gradient-dot' has no iHVP (gradient similarity, no curvature)"
    record["estimator"] = {"name": "gradient-dot", "plugin": "p", "hyperparameters": {}}
    record["metrics"]["param_norm_pearson"] = {"value": None, "undefined": reason}
    record["metrics"]["param_norm_spearman"] = {"value": None, "undefined": reason}
    record["metrics"]["ihvp_relative_residual"] = None
    record["metrics"]["ihvp_residual_undefined"] = reason
    assert records.validate(record) is None
    text = leaderboard.render([record], "iris")
    assert "undefined (n/a" not in text
    # the slim Markdown table leaves both columns to the site, whose row shows the reason
    from benchmark.site import data

    (row,) = data.task_rows([record], data.Defaults())
    assert row["param_norm_spearman_text"] == reason
    assert row["ihvp_residual_text"] == reason


def test_list_options_says_which_tasks_protocol_sets_the_damping(bench):
    result = bench("list", "--options")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    notes = [line for line in lines if "a task's protocol sets it" in line]
    assert notes == [
        f"        ({name}.damping: a task's protocol sets it unless --set or a YAML section does (cifar: "
        "0.01, mnist: 0.01, mnist-lr: 0.032, mnist-mlp: 0.043; other tasks: this default))"
        for name in ("arnoldi", "cg", "ekfac", "exact", "kfac", "lissa", "relatif")
    ]
    for note in notes:  # each right below its field's line
        assert lines[lines.index(note) - 1].strip().startswith(note.strip()[1:].split(":")[0] + " = 0.001: ")
