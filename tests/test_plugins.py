"""Plugin loading through the ``bench`` command: ``-p module``, ``-p no:NAME``, entry points, errors, hooks."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import sys

import pytest

import benchmark.cli.bench
import benchmark.contracts.plugins
from benchmark import hookimpl
from tests.conftest import assert_one_line_error

ESTIMATOR_SOURCE = '''
from benchmark import Estimator, hookimpl


class {cls}(Estimator):
    """A throw-away test estimator: the identity stands in for the Hessian."""

    name = "{name}"

    def ihvp(self, vectors):
        return vectors.clone()


@hookimpl
def bench_estimators():
    return [{cls}]
'''


def estimator_source(name: str, cls: str = "Throwaway") -> str:
    return ESTIMATOR_SOURCE.format(name=name, cls=cls)


def listed(output: str) -> dict[str, str]:
    """``bench list`` output -> {name: plugin}."""
    out = {}
    for line in output.splitlines():
        if line.startswith("  ") and "[" in line:
            name, rest = line.split(None, 1)
            out[name] = rest[1 : rest.index("]")]
    return out


# -- built-in plugins and -p -----------------------------------------------------------------------------------------


def test_builtin_plugins_listed_under_their_names(bench):
    result = bench("list")
    assert result.code == 0
    assert listed(result.out) == {
        "iris": "iris",
        "mnist": "vision",
        "cifar": "vision",
        "imagenet": "imagenet",
        "mnist-lr": "mnist-dattri",
        "mnist-mlp": "mnist-dattri",
        "cg": "cg",
        "exact": "exact",
        "first-order": "first-order",
        "lissa": "lissa",
        "arnoldi": "arnoldi",
        "datainf": "datainf",
        "kfac": "kfac",
        "ekfac": "kfac",
        "tracin": "tracin",
        "grad-cos": "grad-cos",
        "relatif": "relatif",
        "trak": "trak",
    }


def test_example_estimator_plugin_is_listed_and_runnable(bench, tiny, repo_root, tmp_path, monkeypatch, read_records):
    monkeypatch.chdir(repo_root)
    assert "diagonal" not in listed(bench("list").out)

    result = bench("list", "-p", "examples.diagonal_estimator")
    assert result.code == 0, result.err
    assert listed(result.out)["diagonal"] == "examples.diagonal_estimator"

    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        "-p",
        "examples.diagonal_estimator",
        "--estimator",
        "diagonal,exact",
        *tiny,
        "--selection",
        "random",
        "--no-leaderboard",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    records = read_records(results)
    assert sorted(r["estimator"]["name"] for r in records) == ["diagonal", "exact"]
    by_name = {r["estimator"]["name"]: r for r in records}
    assert by_name["diagonal"]["estimator"]["plugin"] == "examples.diagonal_estimator"
    assert by_name["exact"]["estimator"]["plugin"] == "exact"
    for record in records:
        assert record["status"] == "ok", record["failure"]
        assert isinstance(record["metrics"]["spearman"]["value"], float)
    assert by_name["diagonal"]["estimator"]["hyperparameters"] == {"damping": 0.001, "samples": 100, "seed": 0}


def test_dash_p_resolves_modules_from_the_working_directory(bench, tmp_path, monkeypatch):
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "cwd_only_plugin.py").write_text(estimator_source("from-cwd"))
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(workdir))])
    sys.modules.pop("cwd_only_plugin", None)
    try:
        result = bench("list", "-p", "cwd_only_plugin")
    finally:
        sys.modules.pop("cwd_only_plugin", None)
    assert result.code == 0, result.err
    assert listed(result.out)["from-cwd"] == "cwd_only_plugin"


def test_disabling_a_builtin_plugin(bench):
    result = bench("list", "-p", "no:lissa")
    assert result.code == 0
    names = listed(result.out)
    assert "lissa" not in names
    assert {"cg", "exact", "first-order", "iris"} <= set(names)

    result = bench("run", "--task", "iris", "-p", "no:lissa", "--estimator", "lissa")
    assert result.code == 2
    line = assert_one_line_error(result, "unknown estimator 'lissa'")
    assert "(choices: arnoldi, cg, datainf, ekfac, exact, first-order, grad-cos, kfac, relatif, tracin, trak)" in line


# -- entry points ----------------------------------------------------------------------------------------------------


@pytest.fixture
def demo_distribution(tmp_path, monkeypatch):
    """An installed-looking distribution ``demo-bench-plugin`` with a ``bench`` entry point ``demo``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "demo_bench_plugin.py").write_text(estimator_source("demo-estimator", "DemoEstimator"))
    info = site / "demo_bench_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-bench-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench]\ndemo = demo_bench_plugin\n")
    sys.modules.pop("demo_bench_plugin", None)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("demo_bench_plugin", None)


def test_entry_point_distribution_is_discovered(bench, demo_distribution):
    assert "demo" in [ep.name for ep in importlib.metadata.entry_points(group="bench")]  # the fixture is sound
    result = bench("list")
    assert result.code == 0, result.err
    assert listed(result.out)["demo-estimator"] == "demo"


def test_entry_point_plugin_disabled_by_name(bench, demo_distribution):
    result = bench("list", "-p", "no:demo")
    assert result.code == 0, result.err
    names = listed(result.out)
    assert "demo-estimator" not in names
    assert "exact" in names


def test_entry_point_autoload_disabled_by_environment(bench, demo_distribution, monkeypatch):
    monkeypatch.setenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = bench("list")
    assert result.code == 0, result.err
    names = listed(result.out)
    assert "demo-estimator" not in names
    assert "exact" in names  # built-ins are not autoloaded, they stay


def test_monkeypatched_entry_points(bench, plugin_module, monkeypatch):
    plugin_module("fake_ep_plugin", estimator_source("fake-estimator"))
    loaded = []

    class Broken:
        name = "broken"

        def load(self):
            loaded.append("broken")
            raise RuntimeError("this plugin must not be imported")

    good = importlib.metadata.EntryPoint(name="fake", value="fake_ep_plugin", group="bench")
    monkeypatch.setattr(benchmark.contracts.plugins, "entry_points", lambda: [good, Broken()])

    result = bench("list", "-p", "no:broken")
    assert result.code == 0, result.err
    assert listed(result.out)["fake-estimator"] == "fake"
    assert loaded == []  # a blocked entry point is never loaded

    result = bench("list")
    assert_one_line_error(result, 'Error importing plugin "broken"', "this plugin must not be imported")
    assert loaded == ["broken"]

    result = bench("list", "-p", "no:fake", "-p", "no:broken")
    assert result.code == 0, result.err
    assert "fake-estimator" not in listed(result.out)

    monkeypatch.setenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = bench("list")
    assert result.code == 0, result.err
    assert "fake-estimator" not in listed(result.out)
    assert loaded == ["broken"]


# -- plugin errors ---------------------------------------------------------------------------------------------------


def test_misspelled_hook_is_rejected(bench, plugin_module):
    plugin_module(
        "misspelled_hooks",
        """
        from benchmark import hookimpl


        @hookimpl
        def bench_estimator():
            return []
    """,
    )
    result = bench("list", "-p", "misspelled_hooks")
    assert_one_line_error(result, '"misspelled_hooks"', "bench_estimator")


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("raise ImportError('needs the frobnicate package')", "ImportError: needs the frobnicate package"),
        ("def broken(:\n    pass\n", "SyntaxError"),
        ("import no_such_module_for_bench_tests\n", "No module named 'no_such_module_for_bench_tests'"),
        ("raise RuntimeError('boom at import')", "RuntimeError: boom at import"),
    ],
    ids=["import-error", "syntax-error", "missing-dependency", "runtime-error"],
)
def test_plugin_failing_to_import(bench, plugin_module, source, fragment):
    plugin_module("unimportable_plugin", source)
    result = bench("list", "-p", "unimportable_plugin")
    assert_one_line_error(result, 'Error importing plugin "unimportable_plugin"', fragment)


def test_missing_plugin_module(bench):
    result = bench("list", "-p", "no_such_plugin_module_anywhere")
    assert_one_line_error(result, 'Error importing plugin "no_such_plugin_module_anywhere"')


def test_same_estimator_name_from_two_plugins(bench, plugin_module):
    plugin_module("twin_plugin_a", estimator_source("twin", "TwinA"))
    plugin_module("twin_plugin_b", estimator_source("twin", "TwinB"))
    result = bench("list", "-p", "twin_plugin_a", "-p", "twin_plugin_b")
    assert_one_line_error(result, "'twin'", '"twin_plugin_a"', '"twin_plugin_b"')


def test_plugin_clashing_with_a_builtin_estimator(bench, plugin_module):
    plugin_module("exact_again", estimator_source("exact", "ExactAgain"))
    result = bench("list", "-p", "exact_again")
    assert_one_line_error(result, "'exact'", '"exact"', '"exact_again"')


def test_plugin_returning_a_non_estimator(bench, plugin_module):
    plugin_module(
        "returns_junk",
        """
        from benchmark import hookimpl


        @hookimpl
        def bench_estimators():
            return [object]
    """,
    )
    result = bench("list", "-p", "returns_junk")
    assert_one_line_error(result, '"returns_junk"', "not a Estimator subclass")


# -- reporting hooks -------------------------------------------------------------------------------------------------


class Collector:
    """A plugin object recording what the reporting hooks receive."""

    def __init__(self) -> None:
        self.reported: list[dict] = []
        self.finished: list[list[dict]] = []

    @hookimpl
    def bench_report_result(self, record):
        self.reported.append(record)

    @hookimpl
    def bench_run_finished(self, records):
        self.finished.append(list(records))


def test_reporting_hooks(bench, tiny, tmp_path, repo_root, monkeypatch, read_records):
    monkeypatch.chdir(repo_root)
    collector = Collector()
    make_pm = benchmark.cli.bench.plugin_manager

    def plugin_manager(args):
        pm = make_pm(args)
        pm.register(collector, name="collector")
        return pm

    monkeypatch.setattr(benchmark.cli.bench, "plugin_manager", plugin_manager)
    results = tmp_path / "board" / "results"
    out_csv = tmp_path / "export" / "results.csv"
    out_csv.parent.mkdir()
    result = bench(
        "run",
        "--task",
        "iris",
        "-p",
        "examples.csv_export",
        "--csv",
        out_csv,
        "--estimator",
        "exact,first-order",
        *tiny,
        "--no-leaderboard",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err

    written = read_records(results)
    assert len(written) == 4  # 2 estimators x 2 selections

    # bench_run_finished: called once, with every record of the run
    assert len(collector.finished) == 1
    assert sorted(map(_ident, collector.finished[0])) == sorted(map(_ident, written))
    on_disk = {_ident(r): r for r in written}
    for record in collector.finished[0]:
        assert json.loads(json.dumps(record)) == on_disk[_ident(record)]
    assert len(collector.reported) == 4
    assert sorted(map(_ident, collector.reported)) == sorted(map(_ident, written))

    # the CSV exporter: one row per record
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    by_ident = {_ident(r): r for r in written}
    for row in rows:
        record = by_ident[(row["run_id"], row["estimator"], row["selection"])]
        assert row["task"] == "iris"
        assert row["status"] == record["status"] == "ok"
        assert float(row["spearman"]) == pytest.approx(record["metrics"]["spearman"]["value"], rel=1e-12)
        assert float(row["pearson"]) == pytest.approx(record["metrics"]["pearson"]["value"], rel=1e-12)


def test_csv_option_absent_without_the_plugin(bench, tmp_path):
    result = bench("run", "--task", "iris", "--csv", tmp_path / "x.csv")
    assert result.code == 2
    assert_one_line_error(result, "--csv")


def _ident(record: dict) -> tuple[str, str, str]:
    return record["run_id"], record["estimator"]["name"], record["selection"]["kind"]
