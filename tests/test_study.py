"""``bench study``: declarations, the fast Iris trainer against the reference one, end-to-end sweeps, claim rules.

Every sweep here is tiny (a few hundred training steps), so the whole file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import Recipe
from benchmark.common import config as configuration
from benchmark.common.cache import Cache
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.task import BuildContext
from benchmark.numerics.training import descend
from benchmark.studies.claims import check_rule, evaluate
from benchmark.studies.declaration import available, check_estimator_sweep, load_study, parse_study
from benchmark.studies.tables import check_columns
from tasks.iris import Iris, IrisConfig, layer_shapes, mlp_descend
from tests.conftest import assert_one_line_error

TINY_STUDY = """\
name: {name}
title: Tiny Iris sweep
paper: test
task: iris
base: {{width: 4, train_steps: 400, retrain_steps: 60}}
sweep:
  depth: [1, 2]
  activation: [relu, tanh]
seeds: [0, 1]
estimators: [exact]
selections: [top]
run: {{gt_chunk_size: 64}}
panels:
  - name: spearman
    title: Spearman against depth
    figure: Fig. 1c
    x: depth
    y: spearman
    series: [activation]
    where: {{estimator: exact, selection: top}}
    hline: 0.5
    caption: a caption for the report
    claims:
      - {{id: falls, section: "5.1", figure: Fig. 1c, text: falls with depth, paper: falls,
          rule: {{kind: trend, x: depth, y: spearman, direction: decreasing, min_rho: 0.0}}}}
  - name: norms
    kind: scatter
    title: norms
    x: estimated_param_norm
    y: retrained_param_norm
    xscale: log
    yscale: log
    facet: activation
    where: {{estimator: exact, depth: 1}}
"""


def write_study(directory: Path, name: str = "tiny", text: str | None = None) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text if text is not None else TINY_STUDY.format(name=name))
    return path


def png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the fast trainer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_descend_matches_autograd_descend(activation: str) -> None:
    """Leave-one-out re-training from a trained point: the hand-written backpropagation against the autograd one."""
    task = Iris(IrisConfig(depth=2, width=6, activation=activation, weight_decay=0.01))
    problem = task.initial_problem(3)
    ones = torch.ones(1, problem.n_train, dtype=torch.float64)
    start = descend(problem, problem.theta.unsqueeze(0), ones, Recipe(steps=300, lr=0.5))
    weights = torch.ones(4, problem.n_train, dtype=torch.float64)
    weights[torch.arange(4), torch.tensor([0, 5, 17, 99])] = 0.0
    recipe = Recipe(steps=200, lr=0.5)
    expected = descend(problem, start.expand(4, -1), weights, recipe)
    for reproducible in (False, True):
        actual = mlp_descend(
            start.expand(4, -1),
            layer_shapes(2, 6),
            activation,
            problem.x_train,
            problem.y_train,
            weights,
            0.01,
            recipe,
            reproducible=reproducible,
        )
        assert torch.allclose(actual, expected, rtol=0, atol=1e-12), float((actual - expected).abs().max())
    # the same through the task's drop-in for benchmark.numerics.training.descend
    assert torch.allclose(task.descend(problem, start.expand(4, -1), weights, recipe), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("depth", "activation", "weight_decay"),
    [(1, "relu", 0.001), (3, "tanh", 0.001), (2, "relu", 0.0), (4, "tanh", 0.0)],
)
def test_iris_hvp_matches_the_autograd_hvp(depth: int, activation: str, weight_decay: float) -> None:
    """Iris's written-out Hessian-vector products against the harness's autograd ones, full data and minibatch."""
    from benchmark.numerics.problem import Problem

    task = Iris(IrisConfig(depth=depth, width=6, activation=activation, weight_decay=weight_decay, train_steps=300))
    problem = task.build(BuildContext("cpu", 2, Cache(None), False))
    assert type(problem).__name__ == "IrisProblem" and problem.activation == activation
    plain = Problem(
        problem.model,
        problem.loss,
        problem.params,
        problem.x_train,
        problem.y_train,
        problem.x_test,
        problem.y_test,
        problem.weight_decay,
    )
    vectors = torch.randn(3, problem.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for indices in (None, torch.tensor([0, 3, 3, 50, 119])):
        actual, expected = problem.hvp(vectors, indices), plain.hvp(vectors, indices)
        assert torch.allclose(actual, expected, rtol=0, atol=1e-13 * float(expected.abs().max()))
    assert torch.allclose(problem.hessian(), plain.hessian(), rtol=0, atol=1e-12)


def test_mlp_descend_refuses_minibatches_and_momentum() -> None:
    problem = Iris().initial_problem(0)
    weights = torch.ones(1, problem.n_train, dtype=torch.float64)
    for recipe in (Recipe(steps=2, lr=0.1, batch_size=16), Recipe(steps=2, lr=0.1, momentum=0.9)):
        with pytest.raises(ValueError):
            mlp_descend(
                problem.theta.unsqueeze(0),
                layer_shapes(1, 5),
                "relu",
                problem.x_train,
                problem.y_train,
                weights,
                0.0,
                recipe,
            )


def test_iris_retraining_optimiser_is_the_protocols_and_the_generic_descend_runs_it() -> None:
    task = Iris(IrisConfig(retrain_batch_size=16, retrain_momentum=0.9, retrain_steps=5))
    assert task.protocol().retrain == Recipe(steps=5, lr=0.5, batch_size=16, momentum=0.9)
    assert task.problem_key(0) == Iris().problem_key(0)  # a re-training choice does not change the optimum
    problem = task.initial_problem(0)
    weights = torch.ones(2, problem.n_train, dtype=problem.dtype)
    weights[1, 3] = 0.0
    start = problem.theta.unsqueeze(0).expand(2, -1)
    recipe = task.protocol().retrain
    assert torch.equal(task.descend(problem, start, weights, recipe), descend(problem, start, weights, recipe))
    with pytest.raises(ValueError, match="retrain_batch_size"):
        IrisConfig(retrain_batch_size=0)


def test_train_many_stores_the_optima_build_trains(tmp_path: Path) -> None:
    """Batched optima equal, bit for bit, the ones each task trains alone, and build() then loads them."""
    tasks = [
        Iris(IrisConfig(depth=2, activation=a, weight_decay=w, train_steps=600))
        for a in ("relu", "tanh")
        for w in (0.001, 0.0)
    ]
    seeds = [0, 1, 2]
    pairs = [(t, s) for t in tasks for s in seeds]
    shared = Cache(tmp_path / "shared")
    assert Iris.train_many([t for t, _ in pairs], [s for _, s in pairs], BuildContext("cpu", 0, shared, False)) == 12
    assert Iris.train_many([t for t, _ in pairs], [s for _, s in pairs], BuildContext("cpu", 0, shared, False)) == 0
    for task, seed in pairs:
        alone = task.build(BuildContext("cpu", seed, Cache(tmp_path / f"alone-{seed}-{id(task)}"), False))
        batched = task.build(BuildContext("cpu", seed, shared, False))
        assert torch.equal(alone.theta, batched.theta), (task.config, seed)


# -- declarations ---------------------------------------------------------------------------------------------------
def test_declared_studies_are_valid() -> None:
    """Every study under tasks/studies/ parses, each of its points is a valid task config with known estimators (and
    each swept estimator setting a valid config of its estimator), its panels name columns its tables have, and a
    study of a paper's figures tests claims of it."""
    registry = Registry(plugin_manager())
    studies = available()
    assert {
        "iris-depth",
        "iris-width",
        "iris-lissa",
        "iris-checkpoints",
        "mnist-test-points",
        "mnist-weight-decay",
        "mnist-checkpoints",
    } <= set(studies)
    for name, path in studies.items():
        study = load_study(path)
        assert study.name == name and study.panels
        assert study.claims() or not study.paper, name  # the checkpoints studies reproduce no figure of the paper
        task_cls = registry.task(study.task)
        for point in study.points():
            configuration.build(task_cls.Config, point, study.task)
        for estimator in study.estimators:
            registry.estimator(estimator)
        check_estimator_sweep(study, registry)
        check_columns(study, task_cls)
        for panel, claim in study.claims():
            assert check_rule(claim.rule) is None, (name, panel.name, claim.id)


def test_checkpoints_studies_sweep_tracin_and_trak() -> None:
    """TracIn's checkpoints (and on MNIST TRAK's models) against flat references; MNIST in the setting of the committed
    leaderboard row."""
    iris, mnist = load_study(available()["iris-checkpoints"]), load_study(available()["mnist-checkpoints"])
    assert iris.estimator_sweep == {"tracin": {"checkpoints": [1, 2, 5, 10, 20, 50, 100]}}
    assert iris.seeds == [0, 1, 2] and {"grad-cos", "first-order"} <= set(iris.estimators)
    assert mnist.estimator_sweep == {
        "tracin": {"checkpoints": [1, 2, 5, 10, 20, 50]},
        "trak": {"models": [1, 2, 3, 5]},
    }
    assert mnist.estimators == ["tracin", "trak", "grad-cos", "first-order"] and mnist.seeds == [0]
    board = configuration.load_yaml(Path(__file__).parent.parent / "leaderboards/configs/mnist-small-cnn-A-no-wd.yaml")
    (point,) = mnist.points()
    assert point == {**board["mnist"], "weight_decay": 0.0} and mnist.run["gt_seeds"] == board["gt_seeds"]
    assert [p.x for p in iris.panels] == ["checkpoints"] and [p.x for p in mnist.panels] == ["checkpoints", "models"]
    assert not iris.claims() and not mnist.claims()


def test_iris_studies_sweep_what_the_paper_plots() -> None:
    depth, width = load_study(available()["iris-depth"]), load_study(available()["iris-width"])
    assert depth.sweep["depth"] == list(range(1, 9))
    assert min(width.sweep["width"]) == 5 and max(width.sweep["width"]) == 50
    for study in (depth, width):
        assert set(study.sweep["activation"]) == {"relu", "tanh"}
        assert set(study.sweep["weight_decay"]) == {0.001, 0.0}
        assert len(study.seeds) >= 3


MALFORMED = {
    "yaml": ("name: bad\ntask: [iris\n", ["bad.yaml", "malformed YAML"]),
    "not-a-mapping": ("- iris\n", ["bad.yaml", "must be a mapping"]),
    "missing-sweep": ("name: bad\ntitle: t\ntask: iris\nestimators: [exact]\n", ["bad.yaml", "'sweep'", "missing"]),
    "name-mismatch": (TINY_STUDY.format(name="other"), ["bad.yaml", "'name'", "differs"]),
    "sweep-not-list": (
        TINY_STUDY.format(name="bad").replace("depth: [1, 2]", "depth: 3"),
        ["bad.yaml", "'sweep.depth'", "list"],
    ),
    "panel-kind": (
        TINY_STUDY.format(name="bad").replace("kind: scatter", "kind: pie"),
        ["bad.yaml", "'panels[1].kind'", "'pie'"],
    ),
    "rule-kind": (
        TINY_STUDY.format(name="bad").replace("kind: trend", "kind: vibes"),
        ["bad.yaml", "'panels[0].claims[0].rule'", "'vibes'"],
    ),
    "rule-field": (
        TINY_STUDY.format(name="bad").replace("min_rho: 0.0", "min_rh: 0.0"),
        ["bad.yaml", "'panels[0].claims[0].rule'", "'min_rh'"],
    ),
    "seeds": (TINY_STUDY.format(name="bad").replace("seeds: [0, 1]", "seeds: [0, -1]"), ["bad.yaml", "'seeds'"]),
    "unknown-field": (TINY_STUDY.format(name="bad") + "colour: red\n", ["bad.yaml", "'colour'"]),
    "run-option": (
        TINY_STUDY.format(name="bad").replace("gt_chunk_size: 64", "gt_chunk: 64"),
        ["bad.yaml", "'run.gt_chunk'"],
    ),
    "run-truth": (
        TINY_STUDY.format(name="bad").replace("gt_chunk_size: 64", "truths: [loo, lsd]"),
        ["bad.yaml", "'run.truths'", "'lsd'", "loo, lds"],
    ),
    "run-lds-fraction": (
        TINY_STUDY.format(name="bad").replace("gt_chunk_size: 64", "lds_fraction: 1.5"),
        ["bad.yaml", "'run.lds_fraction'", "1.5", "between 0 and 1"],
    ),
    "unknown-task-option": (
        TINY_STUDY.format(name="bad").replace("depth: [1, 2]", "dept: [1, 2]"),
        ["bad.yaml", "'dept'", "did you mean 'depth'?"],
    ),
    "bad-task-value": (
        TINY_STUDY.format(name="bad").replace("activation: [relu, tanh]", "activation: [relu, gelu]"),
        ["bad.yaml", "'gelu'"],
    ),
    "panel-column": (
        TINY_STUDY.format(name="bad").replace("y: spearman\n    series", "y: spearmann\n    series"),
        ["bad.yaml", "'panels[0].y'", "'spearmann'"],
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_declaration_is_one_line_naming_file_and_field(case: str, bench, tmp_path: Path) -> None:
    text, fragments = MALFORMED[case]
    path = write_study(tmp_path, "bad", text)
    result = bench("study", path, "--output-dir", tmp_path / "out", "--no-progress")
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["study", "iris-dept"], ["unknown study 'iris-dept'", "did you mean 'iris-depth'?"]),
        (["study"], ["no study given", "iris-depth"]),
        (["study", "iris-depth", "--estimator", "exat"], ["unknown estimator 'exat'", "did you mean 'exact'?"]),
        (["study", "iris-depth", "--set", "iris.depth=3"], ["iris.depth", "swept"]),
        (["study", "iris-depth", "--set", "lisa.scale=3"], ["'lisa'", "did you mean 'lissa'?"]),
        (["study", "iris-depth", "--seeds", "0,x"], ["--seeds", "'0,x'"]),
    ],
)
def test_bad_study_command_line_is_one_line(argv: list[str], fragments: list[str], bench, tmp_path: Path) -> None:
    assert_one_line_error(bench(*argv, "--output-dir", tmp_path / "out", "--no-progress"), *fragments)


def test_study_list(bench) -> None:
    result = bench("study", "--list")
    assert result.code == 0
    assert "iris-depth" in result.out and "96 runs" in result.out and "mnist-weight-decay" in result.out


def test_a_plugin_ships_a_study(bench, plugin_module, tmp_path: Path) -> None:
    """A plugin module given with -p answers ``bench_studies``: ``bench study --list`` names it as the study's
    plugin, and ``bench study NAME`` finds and runs the study by name."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    write_study(
        shipped,
        "shipped-tiny",
        TINY_STUDY.format(name="shipped-tiny")
        .replace("depth: [1, 2]", "depth: [1]")
        .replace("activation: [relu, tanh]", "activation: [relu]")
        .replace("seeds: [0, 1]", "seeds: [0]"),
    )
    plugin_module(
        "study_shipping_plugin",
        f"""
from pathlib import Path

from benchmark import hookimpl


@hookimpl
def bench_studies():
    return [Path({str(shipped)!r})]
""",
    )
    listed = bench("study", "--list", "-p", "study_shipping_plugin")
    assert listed.code == 0, listed.err
    line = next(line for line in listed.out.splitlines() if line.startswith("shipped-tiny"))
    assert "1 runs" in line and "[plugin study_shipping_plugin]" in line
    assert "[plugin iris]" in next(line for line in listed.out.splitlines() if line.startswith("iris-depth"))
    out = tmp_path / "out"
    result = bench(
        "study",
        "shipped-tiny",
        "-p",
        "study_shipping_plugin",
        "--output-dir",
        out,
        "--cache-dir",
        tmp_path / "cache",
        "--no-progress",
    )
    assert result.code == 0, result.err
    assert len(pd.read_csv(out / "shipped-tiny.csv")) == 1
    assert_one_line_error(
        bench("study", "shipped-tiny", "--output-dir", out, "--no-progress"), "unknown study 'shipped-tiny'"
    )


# -- end to end -----------------------------------------------------------------------------------------------------
def test_study_end_to_end_and_resume(bench, tmp_path: Path) -> None:
    path = write_study(tmp_path)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    result = bench("study", path, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert result.code == 0, result.err
    assert "study tiny: run 1/8: depth=1, activation=relu, seed 0" in result.err
    assert "run 8/8" in result.err and "8 optima trained" in result.err
    rows = pd.read_csv(out / "tiny.csv")
    assert len(rows) == 2 * 2 * 2  # depth x activation x seeds, one estimator, one selection
    assert set(rows["depth"]) == {1, 2} and set(rows["activation"]) == {"relu", "tanh"} and set(rows["seed"]) == {0, 1}
    assert (rows["width"] == 4).all() and (rows["train_steps"] == 400).all()
    assert (rows["status"] == "ok").all() and rows["commit"].notna().all()
    for column in ("spearman", "pearson", "param_norm_spearman", "top_eigenvalue", "test_loss"):
        assert rows[column].notna().any(), column
    points = pd.read_csv(out / "tiny-points.csv")
    assert len(points) == int(rows["k"].sum())
    ratio = np.abs(np.log10(points["estimated_param_norm"] / points["retrained_param_norm"]))
    assert np.allclose(points["abs_log_norm_ratio"], ratio)
    for panel in ("spearman", "norms"):
        assert png(out / f"tiny-{panel}.png")
    assert "Fig. 1c: falls with depth:" in result.out
    # the per-run JSON records go to the cache, not to the results directory
    records = sorted((cache / "study-records" / "tiny" / "iris").glob("*.json"))
    assert len(records) == 8
    first = [json.loads(p.read_text())["ground_truth"] for p in records]
    assert all(gt["computed"] == gt["points"] for gt in first)

    table = (out / "tiny.csv").read_text()
    again = bench("study", path, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert again.code == 0, again.err
    assert "0 optima trained" in again.err and again.err.count("its records are cached") == 8
    assert (out / "tiny.csv").read_text() == table

    # other estimator options: new runs, but every optimum and leave-one-out model comes from the cache
    other = bench(
        "study", path, "--output-dir", out, "--cache-dir", cache, "--set", "exact.max_params=9999", "--no-progress"
    )
    assert other.code == 0, other.err
    assert "0 optima trained" in other.err and "its records are cached" not in other.err
    records = sorted((cache / "study-records" / "tiny" / "iris").glob("*.json"))
    assert len(records) == 16
    again_records = [json.loads(p.read_text()) for p in records]
    again_records = [
        r["ground_truth"] for r in again_records if r["estimator"]["hyperparameters"]["max_params"] == 9999
    ]
    assert len(again_records) == 8 and all(gt["computed"] == 0 and gt["cached"] == gt["points"] for gt in again_records)


@pytest.mark.parametrize("owner_writes", [True, False])
def test_a_run_another_process_holds_is_waited_for_not_repeated(bench, tmp_path: Path, owner_writes: bool) -> None:
    """Processes sharing a cache split a study's runs: a run whose lock another process holds is not started again
    here; it is waited for, and computed here only if its holder released it without writing its records (it died)."""
    import threading
    import time

    from filelock import FileLock

    path = write_study(tmp_path)
    args = ("study", path, "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--no-progress")
    first = bench(*args, "--seeds", "0")
    assert first.code == 0, first.err
    table = (tmp_path / "out" / "tiny.csv").read_text()
    runs = tmp_path / "cache" / "study-runs"
    (held,) = [
        p
        for p in runs.glob("*.json")
        if json.loads(p.read_text())["payload"]["records"][0]["task"]["config"]["depth"] == 2
        and json.loads(p.read_text())["payload"]["records"][0]["task"]["config"]["activation"] == "tanh"
    ]  # run 4/4
    saved = held.read_bytes()
    held.unlink()
    locked = threading.Event()

    def holder() -> None:  # another process in the middle of run 4: it writes its records (or dies) after a while
        lock = FileLock(held.parent / f".{held.stem}.lock")
        with lock:
            locked.set()
            time.sleep(3)
            if owner_writes:
                held.write_bytes(saved)

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(timeout=10)
    again = bench(*args, "--seeds", "0")
    thread.join(timeout=30)
    assert again.code == 0, again.err
    assert again.err.count("its records are cached") == 3
    assert ("run 4/4 done in" in again.err) is not owner_writes
    if owner_writes:
        assert (tmp_path / "out" / "tiny.csv").read_text() == table
    else:  # run 4 computed again here: its ground truth from the cache, the same scores
        before, after = pd.read_csv(io.StringIO(table)), pd.read_csv(tmp_path / "out" / "tiny.csv")
        assert after["spearman"].tolist() == before["spearman"].tolist()


def test_study_ground_truth_agrees_with_bench_run(bench, tmp_path: Path, read_records) -> None:
    """The study's re-training (the task's descend, reference batched with the models) against `bench run`'s."""
    path = write_study(tmp_path)
    assert (
        bench(
            "study",
            path,
            "--output-dir",
            tmp_path / "out",
            "--cache-dir",
            tmp_path / "c1",
            "--seeds",
            "1",
            "--no-progress",
        ).code
        == 0
    )
    rows = pd.read_csv(tmp_path / "out" / "tiny.csv")
    points = pd.read_csv(tmp_path / "out" / "tiny-points.csv")
    results = tmp_path / "results"
    run = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--selection",
        "top",
        "--seed",
        "1",
        "--set",
        "iris.width=4",
        "--set",
        "iris.train_steps=400",
        "--set",
        "iris.retrain_steps=60",
        "--set",
        "iris.depth=2",
        "--set",
        "iris.activation=tanh",
        "--cache-dir",
        tmp_path / "c2",
        "--results-dir",
        results,
        "--no-progress",
        "--no-leaderboard",
    )
    assert run.code == 0, run.err
    (record,) = read_records(results)
    row = rows[(rows["depth"] == 2) & (rows["activation"] == "tanh")].iloc[0]
    mine = points[(points["depth"] == 2) & (points["activation"] == "tanh")]
    assert list(mine["train_index"]) == record["points"]["train_indices"]
    assert np.allclose(mine["retrained"], record["points"]["retrained"], rtol=1e-7, atol=1e-13)
    assert np.allclose(mine["retrained_param_norm"], record["points"]["retrained_param_norm"], rtol=1e-7, atol=1e-13)
    assert row["spearman"] == pytest.approx(record["metrics"]["spearman"]["value"], abs=1e-9)


def test_plugin_estimator_joins_a_study_by_name(bench, tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    path = write_study(tmp_path)
    result = bench(
        "study",
        path,
        "-p",
        "examples.diagonal_estimator",
        "--estimator",
        "exact,diagonal",
        "--seeds",
        "0",
        "--output-dir",
        tmp_path / "out",
        "--cache-dir",
        tmp_path / "cache",
        "--no-progress",
    )
    assert result.code == 0, result.err
    rows = pd.read_csv(tmp_path / "out" / "tiny.csv")
    assert set(rows["estimator"]) == {"exact", "diagonal"}
    assert len(rows) == 4 * 2
    assert rows[rows["estimator"] == "diagonal"]["spearman"].notna().all()
    missing = bench("study", path, "--estimator", "exact,diag", "--output-dir", tmp_path / "out", "--no-progress")
    assert_one_line_error(missing, "unknown estimator 'diag'")


def test_plot_only_redraws_from_the_csv(bench, tmp_path: Path) -> None:
    path = write_study(tmp_path)
    out = tmp_path / "out"
    missing = bench("study", path, "--plot-only", "--output-dir", out)
    assert_one_line_error(missing, "no results for study 'tiny'", "tiny.csv")
    assert (
        bench("study", path, "--seeds", "0", "--output-dir", out, "--cache-dir", tmp_path / "c", "--no-progress").code
        == 0
    )
    (out / "tiny-spearman.png").unlink()
    assert bench("study", path, "--plot-only", "--output-dir", out).code == 0
    assert png(out / "tiny-spearman.png")


# -- claim rules ----------------------------------------------------------------------------------------------------
def frame(**columns: list) -> pd.DataFrame:
    data = pd.DataFrame(columns)
    data["status"] = "ok"
    return data


def test_trend_rule_decides_both_ways() -> None:
    falling = frame(depth=[1, 1, 2, 2, 3, 3], spearman=[0.9, 0.8, 0.7, 0.6, 0.2, 0.3])
    rule = {"kind": "trend", "x": "depth", "y": "spearman", "direction": "decreasing"}
    verdict, measured = evaluate(rule, {"rows": falling})
    assert verdict == "agrees" and "-1.00" in measured
    assert evaluate({**rule, "direction": "increasing"}, {"rows": falling})[0] == "disagrees"
    assert evaluate(rule, {"rows": falling[falling["depth"] < 3]}) == ("not evaluable", "only 2 x values")
    assert evaluate({**rule, "where": {"depth": 9}}, {"rows": falling}) == ("not evaluable", "no rows match")
    assert evaluate(rule, {"rows": None})[0] == "not run"


def test_trend_rule_by_groups_needs_every_group() -> None:
    data = frame(depth=[1, 2, 3] * 2, act=["relu"] * 3 + ["tanh"] * 3, spearman=[0.9, 0.5, 0.1, 0.1, 0.5, 0.9])
    rule = {"kind": "trend", "x": "depth", "y": "spearman", "direction": "decreasing", "by": ["act"]}
    verdict, measured = evaluate(rule, {"rows": data})
    assert verdict == "disagrees" and "act=relu" in measured and "act=tanh" in measured
    assert evaluate({**rule, "where": {"act": "relu"}}, {"rows": data})[0] == "agrees"


def test_failed_rows_and_undefined_values_are_left_out() -> None:
    data = frame(depth=[1, 2, 3, 4], spearman=[0.9, 0.8, np.nan, 0.95])
    data.loc[3, "status"] = "failed"
    rule = {"kind": "trend", "x": "depth", "y": "spearman", "direction": "decreasing"}
    assert evaluate(rule, {"rows": data}) == ("not evaluable", "only 2 x values")


def test_a_side_whose_values_are_all_undefined_names_why() -> None:
    data = frame(wd=[0.01, 0.1], spearman=[0.3, np.nan], undefined=[None, "estimated values are constant (all 0.0008)"])
    rule = {"kind": "greater", "y": "spearman", "a": {"wd": 0.01}, "b": {"wd": 0.1}}
    assert evaluate(rule, {"rows": data}) == (
        "not evaluable",
        "spearman is undefined in the 1 matching row(s): estimated values are constant (all 0.0008)",
    )
    assert evaluate({**rule, "b": {"wd": 1.0}}, {"rows": data}) == ("not evaluable", "no rows match")


def test_greater_and_gap_trend_rules() -> None:
    data = frame(
        depth=[1, 2, 3, 1, 2, 3], estimator=["exact"] * 3 + ["lissa"] * 3, spearman=[0.9, 0.85, 0.8, 0.85, 0.6, 0.3]
    )
    greater = {
        "kind": "greater",
        "y": "spearman",
        "a": {"estimator": "exact"},
        "b": {"estimator": "lissa"},
        "by": ["depth"],
    }
    verdict, measured = evaluate(greater, {"rows": data})
    assert verdict == "agrees" and "3 of 3" in measured
    assert evaluate({**greater, "a": greater["b"], "b": greater["a"]}, {"rows": data})[0] == "disagrees"
    gap = {
        "kind": "gap_trend",
        "x": "depth",
        "y": "spearman",
        "a": {"estimator": "exact"},
        "b": {"estimator": "lissa"},
        "direction": "increasing",
    }
    assert evaluate(gap, {"rows": data})[0] == "agrees"
    assert evaluate({**gap, "direction": "decreasing"}, {"rows": data})[0] == "disagrees"
    pooled = {"kind": "greater", "y": "spearman", "a": {"depth": [1, 2]}, "b": {"depth": 3}}
    assert evaluate(pooled, {"rows": data})[0] == "agrees"


def test_a_null_in_a_rule_matches_the_empty_cells_of_a_swept_none() -> None:
    data = frame(retrain_batch_size=[np.nan, 10.0, np.nan, 10.0], spearman=[0.9, 0.3, 0.8, 0.2])
    rule = {"kind": "greater", "y": "spearman", "a": {"retrain_batch_size": None}, "b": {"retrain_batch_size": 10}}
    verdict, measured = evaluate(rule, {"rows": data})
    assert verdict == "agrees" and "0.85 (2 rows) against 0.25 (2 rows)" in measured


def test_value_and_fraction_rules() -> None:
    data = frame(
        weight_decay=[0.001] * 3 + [0.0] * 3,
        spearman=[0.95, 0.97, 0.99, 0.4, 0.5, 0.6],
        spearman_p=[0.001, 0.01, 0.2, 0.001, 0.001, 0.001],
    )
    value = {"kind": "value", "y": "spearman", "expect": 0.97, "tolerance": 0.05, "where": {"weight_decay": 0.001}}
    verdict, measured = evaluate(value, {"rows": data})
    assert verdict == "agrees" and "0.97" in measured
    assert evaluate({**value, "expect": 0.5}, {"rows": data})[0] == "disagrees"
    assert evaluate({**value, "stat": "min", "expect": 0.4, "where": {}}, {"rows": data})[0] == "agrees"
    fraction = {"kind": "fraction", "y": "spearman_p", "op": "<", "threshold": 0.05}
    assert evaluate(fraction, {"rows": data})[0] == "disagrees"
    assert evaluate({**fraction, "min_fraction": 0.8}, {"rows": data})[0] == "agrees"


def test_verdicts_name_the_rows_on_unstationary_optima_and_drift_dominated_ground_truth() -> None:
    data = frame(
        weight_decay=[0.001, 0.001, 0.0, 0.0],
        spearman=[0.9, 0.8, 0.5, 0.4],
        converged=[False, True, True, True],
        drift_to_effect=[3.0, 40.0, np.nan, 12.0],
    )
    greater = {"kind": "greater", "y": "spearman", "a": {"weight_decay": 0.001}, "b": {"weight_decay": 0.0}}
    verdict, measured = evaluate(greater, {"rows": data})
    assert verdict == "agrees"
    assert measured.endswith(
        "; caveat: 1 of 4 rows on a non-stationary optimum (above the convergence check), 2 of 4 rows drift-dominated"
    )
    value = {"kind": "value", "y": "spearman", "expect": 0.45, "tolerance": 0.1, "where": {"weight_decay": 0.0}}
    assert evaluate(value, {"rows": data})[1].endswith("; caveat: 1 of 2 rows drift-dominated")
    clean = data.assign(converged=True, drift_to_effect=1.0)
    assert "caveat" not in evaluate(greater, {"rows": clean})[1]
    assert "caveat" not in evaluate(greater, {"rows": data.drop(columns=["converged", "drift_to_effect"])})[1]


def test_rule_declarations_are_checked() -> None:
    assert check_rule({"kind": "trend", "x": "depth", "y": "spearman", "direction": "down"}) is not None
    assert check_rule({"kind": "value", "y": "spearman", "expect": "high", "tolerance": 0.1}) is not None
    assert check_rule({"kind": "greater", "y": "spearman", "a": {}}) is not None
    assert check_rule({"kind": "fraction", "y": "p", "op": "<", "threshold": 0.05}) is None


def test_parse_study_reports_the_field(tmp_path: Path) -> None:
    from benchmark.common.errors import UsageError

    data = configuration.safe_load(textwrap.dedent(TINY_STUDY.format(name="s")))
    data["panels"][0]["series"] = [3]
    with pytest.raises(UsageError, match=r"s\.yaml: field 'panels\[0\]\.series'"):
        parse_study(tmp_path / "s.yaml", data)


def test_a_panel_says_how_many_rows_it_cannot_plot() -> None:
    from benchmark.studies.figures import _left_out

    study = parse_study(Path("s.yaml"), configuration.safe_load(TINY_STUDY.format(name="s")))
    data = frame(depth=[1, 1, 2, 2], spearman=[0.9, np.nan, 0.5, 0.4], estimator="exact", selection="top")
    data.loc[3, "status"] = "failed"
    assert _left_out(data, study.panels[0], plotted=2) == "1 failed, 1 without a value (of 4 rows, not plotted)"
    assert _left_out(data.iloc[:1], study.panels[0], plotted=1) == ""


def test_rows_with_an_empty_series_cell_are_a_series_of_their_own(tmp_path: Path, monkeypatch) -> None:
    """A swept None (full-batch re-training) or an estimator without the series field (first-order has no curvature)
    is drawn as the series "None", not dropped."""
    import matplotlib.pyplot as plt

    from benchmark.studies import figures

    study = parse_study(Path("s.yaml"), configuration.safe_load(TINY_STUDY.format(name="s")))
    study.panels[0].series = ["retrain_batch_size"]
    data = frame(depth=[1, 2, 1, 2], spearman=[0.9, 0.8, 0.5, 0.4], estimator="exact", selection="top")
    data["retrain_batch_size"] = [np.nan, np.nan, 10.0, 10.0]
    data["activation"] = "relu"
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keep the figure to read its legend
    figures.plot_panel(study, 0, data, Path("s.csv"), tmp_path / "s.png")
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]
    assert labels == ["retrain_batch_size=10.0", "retrain_batch_size=None"]
    assert png(tmp_path / "s.png")


def test_a_categorical_x_is_labelled_with_its_values(tmp_path: Path, monkeypatch) -> None:
    """An x of names (the ground truth, say) is drawn at positions 0, 1, ... labelled with the names, in any scale."""
    import matplotlib.pyplot as plt

    from benchmark.studies import figures

    study = parse_study(Path("s.yaml"), configuration.safe_load(TINY_STUDY.format(name="s")))
    study.panels[0].x = "truth"
    data = frame(depth=[1, 1], spearman=[0.9, 0.1], estimator="exact", selection="top", activation="relu")
    data["truth"] = ["loo", "loo-scratch"]
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    figures.plot_panel(study, 0, data, Path("s.csv"), tmp_path / "s.png")
    axis = drawn[0].axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["loo", "loo-scratch"]
    assert list(axis.get_xticks()) == [0.0, 1.0]


def test_a_log_x_sweep_is_labelled_with_its_values(tmp_path: Path, monkeypatch) -> None:
    """A line panel's log-scale x is labelled with the swept values only (its minor ticks unlabelled): over about one
    decade matplotlib would label minor ticks too, and they overlap."""
    import matplotlib.pyplot as plt

    from benchmark.studies import figures

    study = parse_study(Path("s.yaml"), configuration.safe_load(TINY_STUDY.format(name="s")))
    study.panels[0].x, study.panels[0].xscale = "retrain_fraction", "log"
    data = frame(depth=[1, 1, 1], spearman=[0.9, 0.8, 0.7], estimator="exact", selection="top", activation="relu")
    data["retrain_fraction"] = [0.02, 0.06, 0.2]
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    figures.plot_panel(study, 0, data, Path("s.csv"), tmp_path / "s.png")
    axis = drawn[0].axes[0]
    drawn[0].canvas.draw()
    assert [label.get_text() for label in axis.get_xticklabels()] == ["0.02", "0.06", "0.2"]
    assert not any(label.get_text() for label in axis.get_xticklabels(minor=True))


def test_a_mean_over_a_non_stationary_optimum_is_drawn_hollow(tmp_path: Path, monkeypatch) -> None:
    """A point whose rows include an optimum that fails the convergence check gets a hollow marker, and the figure's
    note says what hollow means; a figure without such rows has neither."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    from benchmark.studies import figures

    study = parse_study(Path("s.yaml"), configuration.safe_load(TINY_STUDY.format(name="s")))
    data = frame(depth=[1, 1, 2, 2, 3], spearman=[0.9, 0.7, 0.5, 0.4, 0.2], estimator="exact", selection="top")
    data["activation"] = "relu"
    data["converged"] = [True, True, True, False, False]

    def draw(table: pd.DataFrame) -> tuple[list[float], str]:
        drawn = []
        monkeypatch.setattr(plt, "close", drawn.append)
        figures.plot_panel(study, 0, table, Path("s.csv"), tmp_path / "s.png")
        hollow = [
            float(x)
            for collection in drawn[0].axes[0].collections
            if isinstance(collection, PathCollection) and (collection.get_facecolor()[:, :3] == 1.0).all()
            for x, _ in collection.get_offsets()
        ]
        return hollow, " ".join(text.get_text() for text in drawn[0].texts)

    hollow, note = draw(data)
    assert hollow == [2.0, 3.0] and "hollow markers" in note
    hollow, note = draw(data.assign(converged=True))
    assert hollow == [] and "hollow" not in note


def test_train_many_leaves_an_optimum_another_process_is_training(tmp_path: Path) -> None:
    """An optimum whose cache lock is held elsewhere is not trained a second time: train_many skips it, and trains it
    once the lock is free (two concurrent studies on one cache train each optimum once)."""
    tasks = [Iris(IrisConfig(train_steps=50, weight_decay=w)) for w in (0.001, 0.0)]
    cache = Cache(tmp_path)
    context = BuildContext("cpu", 0, cache, False)
    other = cache.tensor_lock("optima", tasks[0].problem_key(0))
    other.acquire()
    try:
        assert Iris.train_many(tasks, [0, 0], context) == 1
        assert cache.load_tensors("optima", tasks[0].problem_key(0), warn=False) is None
        assert cache.load_tensors("optima", tasks[1].problem_key(0), warn=False) is not None
    finally:
        other.release()
    assert Iris.train_many(tasks, [0, 0], context) == 1
    assert Iris.train_many(tasks, [0, 0], context) == 0
