"""The asv timing suite (``asv_bench/``) and ``bench timing``: estimator discovery through the plugin manager, what
runs at which size, the suite's accuracy against ``bench run``, and Table 2 rendered from a small asv results tree
written in asv's own format."""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from asv_bench import cases
from benchmark import Recipe
from benchmark.common.cache import Cache
from benchmark.common.errors import PluginError
from benchmark.contracts.testing import logistic_regression_problem
from benchmark.evaluation import timing
from benchmark.numerics.trajectory import TrainingRun
from tests.conftest import TINY, assert_one_line_error

REPO = Path(__file__).resolve().parent.parent
DIAGONAL = REPO / "examples" / "diagonal_estimator.py"
BUILTIN_ESTIMATORS = [
    "exact",
    "cg",
    "lissa",
    "first-order",
    "arnoldi",
    "datainf",
    "kfac",
    "ekfac",
    "tracin",
    "grad-cos",
    "relatif",
    "trak",
]
TINY_IRIS = {"train_steps": 300, "retrain_steps": 50}


@pytest.fixture
def suite_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No suite variable from the caller's shell; forget plugin files imported by a test."""
    for name in (
        cases.LARGE_ENV,
        cases.CASES_ENV,
        cases.PLUGINS_ENV,
        cases.DEVICE_ENV,
        cases.THREADS_ENV,
        cases.CACHE_ENV,
        cases.DATA_ENV,
        cases.TIMER_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    sys.modules.pop(DIAGONAL.stem, None)


# -- the suite: discovery and what runs --------------------------------------------------------------------------
def test_estimators_are_discovered_through_the_plugin_manager(suite_env):
    assert cases.estimator_names() == BUILTIN_ESTIMATORS
    suite_env.setenv(cases.PLUGINS_ENV, str(DIAGONAL))
    assert cases.plugin_args() == ["diagonal_estimator"]
    assert cases.estimator_names() == [*BUILTIN_ESTIMATORS, "diagonal"]
    suite_env.setenv(cases.PLUGINS_ENV, f"{DIAGONAL}, no:lissa")
    assert cases.estimator_names() == [name for name in BUILTIN_ESTIMATORS if name != "lissa"] + ["diagonal"]
    suite_env.setenv(cases.PLUGINS_ENV, str(REPO / "examples" / "missing.py"))
    with pytest.raises(PluginError, match="missing.py"):
        cases.estimator_names()


def test_every_benchmark_times_a_plugin_estimator_and_params_ignore_sizes(suite_env):
    from asv_bench import influence

    try:
        suite_env.setenv(cases.PLUGINS_ENV, str(DIAGONAL))
        importlib.reload(influence)
        with_plugin = {
            name: cls.params
            for name, cls in vars(influence).items()
            if isinstance(cls, type) and hasattr(cls, "params")
        }
        assert with_plugin["Prepare"][1][-1] == "diagonal"
        assert with_plugin["Influence"][1] == with_plugin["Spearman"][1] == with_plugin["Residual"][1]
        suite_env.delenv(cases.PLUGINS_ENV)
        importlib.reload(influence)
        default = influence.Prepare.params
        suite_env.setenv(cases.LARGE_ENV, "1")
        suite_env.setenv(cases.CASES_ENV, "iris")
        importlib.reload(influence)
        assert influence.Prepare.params == default  # the environment decides what runs, never the parameters
        assert default == [list(cases.CASES), BUILTIN_ESTIMATORS, ["small", "cpu", "paper"]]
        assert "mnist/resnet50" in default[0] and "cifar/vgg14" in default[0] and "iris" in default[0]
    finally:
        suite_env.undo()
        importlib.reload(influence)


def test_only_small_sizes_run_unless_asked(suite_env):
    runs = [c for c in cases.CASES for s in cases.SIZES if cases.skip_reason(c, s) is None]
    assert runs == ["iris", "mnist/small-cnn", "mnist/lenet", "cifar/small-cnn", "cifar/lenet"]
    assert "BENCH_ASV_LARGE=1" in cases.skip_reason("mnist/vgg13", "small")
    assert "BENCH_ASV_LARGE=1" in cases.skip_reason("mnist/lenet", "cpu")
    assert "one size" in cases.skip_reason("iris", "paper")
    large = {cases.LARGE_ENV: "1"}
    assert cases.skip_reason("mnist/vgg13", "small", large) is None
    assert "BENCH_DATA_DIR" in cases.skip_reason("mnist/vgg13", "cpu", large)
    assert cases.skip_reason("mnist/vgg13", "cpu", {**large, cases.DATA_ENV: "/data"}) is None
    assert cases.skip_reason("iris", "small", {cases.CASES_ENV: "mnist/lenet"}) == "not selected by BENCH_ASV_CASES"
    with pytest.raises(ValueError, match="'mnist/lenett'.*mnist/lenet"):
        cases.skip_reason("iris", "small", {cases.CASES_ENV: "mnist/lenett"})


def test_setup_skips_what_does_not_run_and_what_an_estimator_declined(suite_env, tmp_path):
    from asv_bench import influence

    artefacts = {
        "cache_dir": str(tmp_path),
        "cases": {
            "iris|small": {
                "n_train": 120,
                "n_params": 43,
                "test_index": 7,
                "threads": 1,
                "estimators": {
                    "exact": {
                        "status": "declined",
                        "reason": "too many parameters",
                        "spearman": None,
                        "residual": None,
                    },
                    "cg": {"status": "error", "reason": "TypeError: bug", "spearman": None, "residual": None},
                },
            }
        },
    }
    path = tmp_path / "artefacts.json"
    path.write_text(json.dumps(artefacts))
    with pytest.raises(NotImplementedError, match="BENCH_ASV_LARGE"):
        influence.Prepare().setup(str(path), "mnist/vgg13", "exact", "small")
    with pytest.raises(NotImplementedError, match="one size"):
        influence.Influence().setup(str(path), "iris", "exact", "cpu")
    with pytest.raises(NotImplementedError, match="exact declined iris at size small: too many parameters"):
        influence.Influence().setup(str(path), "iris", "exact", "small")
    assert cases.outcome(artefacts, "iris", "cg", "small")["status"] == "error"  # a bug is not skipped
    with pytest.raises(RuntimeError, match="TypeError: bug"):
        influence.Spearman().setup(str(path), "iris", "cg", "small")
    with pytest.raises(NotImplementedError, match="CUDA only"):
        influence.GpuMemory().setup(str(path), "iris", "exact", "small")


def test_suite_accuracy_equals_bench_run(suite_env, bench, tmp_path, read_records):
    """The suite's Spearman and iHVP residual are the numbers `bench run --selection top` records."""
    estimators = ["exact", "cg", "lissa", "first-order"]
    suite = cases.evaluate("iris", "small", tmp_path / "cache", estimators, options=TINY_IRIS)
    assert suite["n_train"] == 120 and suite["n_params"] == 43
    result = bench(
        "run",
        "--task",
        "iris",
        *TINY,
        "--selection",
        "top",
        "--estimator",
        ",".join(estimators),
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
        "--no-leaderboard",
    )
    assert result.code == 0, result.err
    records = {r["estimator"]["name"]: r for r in read_records(tmp_path / "results")}
    for name in estimators:
        outcome, record = suite["estimators"][name], records[name]
        assert outcome["status"] == "ok" and record["status"] == "ok", (outcome, record["failure"])
        assert record["test_point"]["index"] == suite["test_index"]
        assert outcome["spearman"] == pytest.approx(record["metrics"]["spearman"]["value"], abs=1e-12), name
        assert outcome["residual"] == pytest.approx(record["metrics"]["ihvp_relative_residual"], rel=1e-9), name
    assert suite["estimators"]["exact"]["spearman"] > 0.9  # a convex-enough problem: the exact answer is good


def test_suite_end_to_end_on_tiny_iris(suite_env, tmp_path):
    """setup_cache, then each benchmark's setup and body, as asv calls them (in one process here)."""
    from asv_bench import influence

    suite_env.setenv(cases.CASES_ENV, "iris")
    suite_env.setenv(cases.CACHE_ENV, str(tmp_path / "cache"))
    suite_env.setattr(cases, "task_options", lambda case, size: dict(TINY_IRIS))
    suite_env.chdir(tmp_path)
    artefacts = influence._Suite().setup_cache()
    assert Path(artefacts).parent == tmp_path
    data = cases.load_artefacts(artefacts)
    assert list(data["cases"]) == ["iris|small"] and data["device"] == "cpu"
    args = (artefacts, "iris", "cg", "small")
    bench = influence.Prepare()
    bench.setup(*args)
    assert bench.prepared.estimator.problem is None
    bench.time_prepare(*args)
    assert bench.prepared.estimator.problem is bench.prepared.problem
    bench = influence.Influence()
    bench.setup(*args)
    assert influence.Influence().setup(*args) is None and cases.prepared(*args) is bench.prepared  # prepared once
    values = bench.prepared.influence()
    assert values.shape == (1, 120)
    bench.time_influence(*args)
    bench.peakmem_influence(*args)
    with pytest.raises(NotImplementedError, match="cg uses no extra models"):
        influence.OwnPreparation().setup(*args)
    tracin = (artefacts, "iris", "tracin", "small")
    assert data["cases"]["iris|small"]["estimators"]["tracin"]["models_s"] > 0
    own = influence.OwnPreparation()
    own.setup(*tracin)
    assert own.prepared.problem.curvature_cache is None and own.prepared.problem.training_run.cache is not None
    own.time_prepare_own(*tracin)
    assert own.prepared.estimator.models["from_cache"]  # its checkpoints: read back, not replayed
    scratch = influence.Prepare()
    scratch.setup(*tracin)
    scratch.time_prepare(*tracin)
    assert not scratch.prepared.estimator.models["from_cache"]
    spearman = influence.Spearman()
    spearman.setup(*args)
    assert spearman.track_spearman(*args) == data["cases"]["iris|small"]["estimators"]["cg"]["spearman"]
    residual = influence.Residual()
    residual.setup(*args)
    assert residual.track_residual(*args) == data["cases"]["iris|small"]["estimators"]["cg"]["residual"]
    assert residual.track_residual(*args) < 1e-2  # CG against the dense solve on a 43-parameter problem
    sizes = influence.Sizes()
    sizes.setup(artefacts, "iris", "small")
    assert (
        sizes.track_train_points(artefacts, "iris", "small"),
        sizes.track_parameters(artefacts, "iris", "small"),
        sizes.track_threads(artefacts, "iris", "small"),
    ) == (120, 43, 1)
    assert influence.Device().track_cuda() == 0
    assert influence.Device().track_process_timer() == 0 and influence.Prepare.timer is time.perf_counter
    suite_env.setenv(cases.TIMER_ENV, "process")
    assert cases.timer() is time.process_time and influence.Device().track_process_timer() == 1
    suite_env.setenv(cases.TIMER_ENV, "cpu")
    with pytest.raises(ValueError, match="'cpu'.*wall, process"):
        cases.timer()
    assert influence.Sizes.setup_cache is influence._Suite.setup_cache  # one setup_cache for the whole suite


# -- bench timing on a small asv results tree ------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
CASES = ["iris", "mnist/small-cnn", "mnist/vgg13"]
ESTIMATORS = ["exact", "cg", "tracin"]
SIZES = ["small", "cpu"]
NAN = math.nan
VALUES = {  # (case, estimator, size) -> value; absent: NaN (skipped)
    timing.PREPARE: {
        ("iris", "exact", "small"): 0.5,
        ("iris", "cg", "small"): 1e-5,
        ("mnist/small-cnn", "exact", "small"): 80.0,
        ("mnist/small-cnn", "cg", "cpu"): 2e-5,
        ("iris", "tracin", "small"): 22.0,
        ("mnist/small-cnn", "tracin", "small"): 0.3,
    },
    timing.OWN_PREPARE: {  # tracin alone uses extra models; on the small CNN its models cost less than the noise
        ("iris", "tracin", "small"): 0.04,
        ("mnist/small-cnn", "tracin", "small"): 0.31,
    },
    timing.QUERY: {
        ("iris", "exact", "small"): 0.01,
        ("iris", "cg", "small"): 0.25,
        ("mnist/small-cnn", "exact", "small"): 0.02,
        ("mnist/small-cnn", "cg", "cpu"): None,
        ("iris", "tracin", "small"): 0.01,
        ("mnist/small-cnn", "tracin", "small"): 0.02,
    },
    timing.PEAKMEM: {("iris", "exact", "small"): 800 * 2**20, ("iris", "cg", "small"): 810 * 2**20},
    timing.SPEARMAN: {
        ("iris", "exact", "small"): 0.991,
        ("iris", "cg", "small"): 0.99,
        ("mnist/small-cnn", "exact", "small"): -0.173,
    },
    timing.RESIDUAL: {("iris", "exact", "small"): 0.0, ("iris", "cg", "small"): 4.9e-11},
    timing.GPU_MEMORY: {},
}
SIZE_VALUES = {
    timing.TRAIN_POINTS: {("iris", "small"): 120, ("mnist/small-cnn", "small"): 128, ("mnist/small-cnn", "cpu"): 5500},
    timing.PARAMETERS: {("iris", "small"): 43, ("mnist/small-cnn", "small"): 2616, ("mnist/small-cnn", "cpu"): 2616},
    timing.THREADS: {("iris", "small"): 1, ("mnist/small-cnn", "small"): 1, ("mnist/small-cnn", "cpu"): 1},
}
COLUMNS = [
    "result",
    "params",
    "version",
    "started_at",
    "duration",
    "stats_ci_99_a",
    "stats_ci_99_b",
    "stats_q_25",
    "stats_q_75",
    "stats_number",
    "stats_repeat",
    "samples",
    "profile",
]


def _row(params: list[list[str]], values: dict[tuple, float | None]) -> list:
    result = [values.get(combination, NAN) for combination in itertools.product(*params)]
    return [result, [[repr(p) for p in axis] for axis in params], "0" * 64, 1795926286827, 6.8]


def write_results(root: Path, commit: str = COMMIT, machine: str = "vm", env: str = "virtualenv-py3.11") -> Path:
    """One asv result file in asv's format (results/<machine>/machine.json and <commit[:8]>-<env>.json)."""
    directory = root / machine
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "machine.json").write_text(
        json.dumps(
            {
                "arch": "x86_64",
                "cpu": "AMD EPYC",
                "machine": machine,
                "num_cpu": "2",
                "os": "Linux 6.18",
                "ram": str(24 * 2**30),
                "version": 1,
            }
        )
    )
    results = {name: _row([CASES, ESTIMATORS, SIZES], values) for name, values in VALUES.items()}
    results.update({name: _row([CASES, SIZES], values) for name, values in SIZE_VALUES.items()})
    results[timing.CUDA] = [[0], [], "0" * 64, 1795926286827, 6.8]
    results[timing.PROCESS_TIMER] = [[1], [], "0" * 64, 1795926286827, 6.8]
    data = {
        "commit_hash": commit,
        "env_name": env,
        "date": 1795926181000,
        "params": {"machine": machine, "python": "3.11"},
        "python": "3.11",
        "requirements": {},
        "env_vars": {},
        "result_columns": COLUMNS,
        "results": results,
        "durations": {},
        "version": 2,
    }
    path = directory / f"{commit[:8]}-{env}.json"
    # asv writes NaN for a skipped combination, which json.dumps spells the same way
    path.write_text(json.dumps(data))
    return path


def test_bench_timing_renders_table_2(bench, tmp_path):
    results = tmp_path / "results"
    write_results(results)
    output = tmp_path / "board" / "timing.md"
    result = bench("timing", "--results-dir", results, "--output", output)
    assert result.code == 0, result.err
    text = output.read_text()
    assert result.out == text + "\n"
    lines = text.splitlines()
    assert lines[0] == timing.BANNER
    assert f"`bench timing --commit 01234567 --results-dir {results} --output {output}`" in text
    assert "machine `vm` (AMD EPYC, 2 CPUs, 24.0 GiB RAM, Linux 6.18); device: **CPU**" in text
    assert "commit `01234567`, environment `virtualenv-py3.11`" in text
    assert "- Clock: the CPU time of each benchmark process (`BENCH_ASV_TIMER=process`)" in text
    header = "| task | architecture | training points | parameters | torch threads | paper, Table 2 (s) | exact |"
    header += " cg | tracin |"
    assert header in lines
    small = lines.index("## Size `small`")
    cpu = lines.index("## Size `cpu`")
    assert small < cpu
    table = lines[small:cpu]
    # tracin: its own preparation and query, then what replaying the training run for its checkpoints cost
    assert "| Iris | MLP (depth 1, width 5) | 120 | 43 | 1 | - | 0.51 | 0.25 | 0.05 + 21.96 models |" in table
    assert "| MNIST | small CNN | 128 | 2,616 | 1 | 141.13 ± 0.51 | 80.02 | declined | 0.32 + 0 models |" in table
    assert "| MNIST | VGG13 | - | - | - | 3,886.23 ± 3.45 | - | - | - |" in table
    assert "| Iris | MLP (depth 1, width 5) | exact | 0.5 | - | 0.01 | 800 | - | 0.99 | 0.0e+00 |" in table
    assert "| Iris | MLP (depth 1, width 5) | cg | 1e-05 | - | 0.25 | 810 | - | 0.99 | 4.9e-11 |" in table
    assert "| Iris | MLP (depth 1, width 5) | tracin | 22.00 | 21.96 | 0.01 | - | - | - | - |" in table
    assert "| MNIST | small CNN | exact | 80.00 | - | 0.02 | - | - | -0.17 | - |" in table
    assert "| MNIST | small CNN | cg | declined | - | declined | - | - | - | - |" in table
    assert not any(line.startswith("| MNIST | VGG13 | exact") for line in table)  # not run: no detail rows
    rest = lines[cpu:]
    assert "| MNIST | small CNN | 5,500 | 2,616 | 1 | 141.13 ± 0.51 | declined | failed | declined |" in rest
    assert "| MNIST | small CNN | cg | 2e-05 | - | failed | - | - | - | - |" in rest
    assert not any(line.startswith("| Iris | MLP (depth 1, width 5) | exact") for line in rest)


def test_bench_timing_chooses_results_explicitly(bench, tmp_path):
    results = tmp_path / "results"
    write_results(results, COMMIT)
    write_results(results, OTHER)
    result = bench("timing", "--results-dir", results)
    assert_one_line_error(result, "several commits", "--commit", "01234567", "fedcba98")
    result = bench("timing", "--results-dir", results, "--commit", "fedcba")
    assert result.code == 0, result.err
    assert "commit `fedcba98`" in result.out
    assert_one_line_error(bench("timing", "--results-dir", results, "--commit", "abc"), "'abc'", "01234567")
    write_results(results, COMMIT, env="existing-py")
    assert_one_line_error(
        bench("timing", "--results-dir", results, "--commit", "0123"), "--env", "existing-py", "virtualenv-py3.11"
    )
    result = bench("timing", "--results-dir", results, "--commit", "0123", "--env", "existing-py")
    assert result.code == 0 and "environment `existing-py`" in result.out
    assert_one_line_error(bench("timing", "--results-dir", results, "--machine", "wm"), "'wm'", "vm")
    write_results(results, COMMIT, machine="gpu")
    assert_one_line_error(bench("timing", "--results-dir", results, "--commit", "0123"), "--machine", "gpu", "vm")


def test_bench_timing_bad_input_is_one_line(bench, tmp_path):
    assert_one_line_error(bench("timing", "--results-dir", tmp_path / "nowhere"), "nowhere", "docs/timing.md")
    path = write_results(tmp_path / "results")
    path.write_text("{not json")
    assert_one_line_error(bench("timing", "--results-dir", tmp_path / "results"), "malformed", path.name)
    path.write_text(json.dumps({"commit_hash": COMMIT}))
    assert_one_line_error(
        bench("timing", "--results-dir", tmp_path / "results"), "malformed", "no 'result_columns' field"
    )


def test_paper_table_2_is_transcribed_whole():
    assert len(timing.TABLE2) == 11 and ("cifar", "small-cnn") not in timing.TABLE2
    assert timing.TABLE2["mnist", "small-cnn"] == (141.13, 0.51)
    assert timing.TABLE2["cifar", "resnet50"] == (3857.66, 21.6)


def test_a_timed_preparation_reads_no_dense_hessian_or_checkpoints_from_the_cache(tmp_path):
    """``exact``'s Hessian and ``tracin``'s checkpoints, cached by ``setup_cache``'s evaluation, would make a timed
    preparation a disk read: the problem a ``time_prepare`` sample prepares has neither cache, and the same run."""
    problem = logistic_regression_problem()
    cache = Cache(tmp_path)
    run = TrainingRun(problem, [Recipe(steps=10, lr=1.0)], cache, {"task": "test"})
    cached = dataclasses.replace(problem, curvature_cache=(cache, {"task": "test"}), training_run=run)
    fresh = cases.from_scratch(cached)
    assert fresh.curvature_cache is None
    assert fresh.training_run is not None and fresh.training_run.cache is None
    assert fresh.training_run.phases == run.phases and fresh.training_run.initial is run.initial
    assert torch.equal(fresh.theta, problem.theta)
    fresh.trajectory(2)
    assert not (tmp_path / "trajectories").exists()
