"""Nothing a plugin does takes a run down (issue 17): bad estimator output, exceptions and ``SystemExit`` in plugin
hooks and estimator methods, unknown ``-p no:NAME``, unwritable paths, and the exit-status rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

BAD_ESTIMATOR = '''
import torch
from benchmark import Estimator, hookimpl


class Bad(Estimator):
    """A test estimator whose output is deliberately wrong: {what}."""

    name = "bad"

    def ihvp(self, vectors):
        {ihvp}

{extra}

@hookimpl
def bench_estimators():
    return [Bad]
'''


def bad_estimator(what: str, ihvp: str = "return vectors.clone()", extra: str = "") -> str:
    return BAD_ESTIMATOR.format(what=what, ihvp=ihvp, extra=extra)


def run_args(tmp_path: Path, tiny: list[str], *extra: str) -> list:
    return [
        "run",
        "--task",
        "iris",
        *tiny,
        "--selection",
        "random",
        "--no-leaderboard",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
        *extra,
    ]


# -- defect 3: estimator output is validated ---------------------------------------------------------------------------

INFLUENCE_OVERRIDE = """
    def influence(self, test_indices):
        problem = self._require_problem()
        scores = problem.train_gradient_products(problem.test_gradients(test_indices)) / problem.n_train
        {body}
"""

BAD_OUTPUTS = {
    "ihvp-extra-column": (
        dict(ihvp="return torch.cat([vectors, vectors[:, :1]], dim=1)"),
        ["ihvp", "(1, 44)", "expected (1, 43)"],
    ),
    "ihvp-float32": (dict(ihvp="return vectors.float()"), ["ihvp", "torch.float32", "torch.float64"]),
    "ihvp-integer": (dict(ihvp="return vectors.long()"), ["ihvp", "torch.int64"]),
    "ihvp-nan": (dict(ihvp="return vectors * float('nan')"), ["ihvp", "not finite"]),
    "ihvp-not-a-tensor": (dict(ihvp="return vectors.tolist()"), ["ihvp", "list", "Tensor"]),
    "influence-too-few-columns": (
        dict(extra=INFLUENCE_OVERRIDE.format(body="return scores[:, :-5]")),
        ["influence", "(1, 115)", "expected (1, 120)"],
    ),
    "influence-extra-rows": (
        dict(extra=INFLUENCE_OVERRIDE.format(body="return torch.cat([scores, scores, scores])")),
        ["influence", "(3, 120)", "expected (1, 120)"],
    ),
    "influence-1d": (
        dict(extra=INFLUENCE_OVERRIDE.format(body="return scores[0]")),
        ["influence", "(120,)", "expected (1, 120)"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_bad_estimator_output_is_that_estimators_failure(bench, plugin_module, tiny, tmp_path, read_records, case):
    source, fragments = BAD_OUTPUTS[case]
    plugin_module("bad_output_plugin", bad_estimator(case, **source))
    result = bench("-p", "bad_output_plugin", *run_args(tmp_path, tiny, "--estimator", "bad,first-order"))
    assert "Traceback" not in result.err
    records = {r["estimator"]["name"]: r for r in read_records(tmp_path / "results")}
    assert set(records) == {"bad", "first-order"}, result.err
    assert records["first-order"]["status"] == "ok"
    bad = records["bad"]
    assert bad["status"] == "failed" and bad["metrics"] is None
    for fragment in fragments:
        assert fragment in bad["failure"], (fragment, bad["failure"])
    assert "bad" in result.err and bad["failure"] in result.err
    assert result.code == 0  # an estimator produced a score


def test_bad_parameter_change_shape_is_recorded_not_scored(bench, plugin_module, tiny, tmp_path, read_records):
    extra = """
    def parameter_change(self, train_indices):
        return super().parameter_change(train_indices)[:, :-1]
"""
    plugin_module("bad_change_plugin", bad_estimator("parameter change", extra=extra))
    result = bench("-p", "bad_change_plugin", *run_args(tmp_path, tiny, "--estimator", "bad"))
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path / "results")
    assert record["status"] == "ok"
    reason = record["metrics"]["param_norm_spearman"]["undefined"]
    assert record["metrics"]["param_norm_spearman"]["value"] is None
    assert "parameter_change" in reason and "(20, 42)" in reason and "expected (20, 43)" in reason


# -- defect 4: SystemExit and KeyboardInterrupt from plugin code ------------------------------------------------------


@pytest.mark.parametrize("statement", ["raise SystemExit(0)", "import sys; sys.exit(0)", "raise KeyboardInterrupt"])
@pytest.mark.parametrize("method", ["prepare", "ihvp"])
def test_system_exit_in_an_estimator_is_its_failure(
    bench, plugin_module, tiny, tmp_path, read_records, method, statement
):
    if method == "ihvp":
        source = bad_estimator("exits", ihvp=statement)
    else:
        source = bad_estimator("exits", extra=f"    def prepare(self, problem):\n        {statement}\n")
    plugin_module("exiting_plugin", source)
    result = bench("-p", "exiting_plugin", *run_args(tmp_path, tiny, "--estimator", "bad,first-order"))
    records = {r["estimator"]["name"]: r for r in read_records(tmp_path / "results")}
    assert set(records) == {"bad", "first-order"}, result.err
    assert records["first-order"]["status"] == "ok"
    assert records["bad"]["status"] == "failed"
    exception = statement.split()[-1].split("(")[0] if "raise" in statement else "SystemExit"
    assert exception in records["bad"]["failure"]
    assert result.code == 0


@pytest.mark.parametrize("statement", ["import sys; sys.exit(0)", "raise SystemExit(3)", "raise KeyboardInterrupt"])
def test_system_exit_on_plugin_import_is_that_plugins_error(bench, plugin_module, statement):
    plugin_module("exit_on_import", statement)
    result = bench("list", "-p", "exit_on_import")
    assert_one_line_error(result, 'Error importing plugin "exit_on_import"')


# -- defect 2: an exception in any plugin hook ------------------------------------------------------------------------

HOOKS = {
    "bench_estimators": "def bench_estimators():\n    raise RuntimeError('boom in hook')\n",
    "bench_tasks": "def bench_tasks():\n    raise RuntimeError('boom in hook')\n",
    "bench_addoption": "def bench_addoption(parser):\n    raise RuntimeError('boom in hook')\n",
    "bench_configure": "def bench_configure(config):\n    raise RuntimeError('boom in hook')\n",
}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_exception_in_a_plugin_hook_is_one_line(bench, plugin_module, tiny, tmp_path, hook):
    plugin_module("raising_hooks", "from benchmark import hookimpl\n\n@hookimpl\n" + HOOKS[hook])
    result = bench("-p", "raising_hooks", *run_args(tmp_path, tiny, "--estimator", "first-order"))
    assert_one_line_error(result, '"raising_hooks"', hook, "RuntimeError: boom in hook")
    verbose = bench("-v", "-p", "raising_hooks", *run_args(tmp_path, tiny, "--estimator", "first-order"))
    assert verbose.code == result.code
    assert "Traceback" in verbose.err and "boom in hook" in verbose.err


def test_system_exit_in_a_plugin_hook_is_one_line(bench, plugin_module, tiny, tmp_path):
    plugin_module(
        "exiting_hooks",
        "from benchmark import hookimpl\n\n@hookimpl\ndef bench_configure(config):\n    raise SystemExit(0)\n",
    )
    result = bench("-p", "exiting_hooks", *run_args(tmp_path, tiny, "--estimator", "first-order"))
    assert_one_line_error(result, '"exiting_hooks"', "bench_configure", "SystemExit")


@pytest.mark.parametrize("hook", ["bench_report_result", "bench_run_finished"])
def test_failing_reporting_hook_loses_no_record(bench, plugin_module, tiny, tmp_path, read_records, hook):
    argument = "record" if hook == "bench_report_result" else "records"
    plugin_module(
        "failing_reporter",
        f"from benchmark import hookimpl\n\n@hookimpl\n"
        f"def {hook}({argument}):\n    raise ValueError('reporter broke')\n",
    )
    result = bench("-p", "failing_reporter", *run_args(tmp_path, tiny, "--estimator", "exact,first-order"))
    assert "Traceback" not in result.err
    assert len(read_records(tmp_path / "results")) == 2  # every record written despite the failing reporter
    assert result.code == 1
    errors = [line for line in result.err_lines if line.startswith("bench: error:")]
    assert len(errors) == 1, result.err
    assert '"failing_reporter"' in errors[0] and hook in errors[0] and "ValueError: reporter broke" in errors[0]


# -- defect 12: -p no:NAME with an unknown NAME ------------------------------------------------------------------------


def test_unknown_plugin_in_dash_p_no_is_an_error(bench):
    result = bench("list", "-p", "no:lisa")
    assert result.code == 2
    assert_one_line_error(result, "'lisa'", "-p no:", "did you mean 'lissa'?")


def test_dash_p_no_accepts_every_kind_of_plugin_name(bench, plugin_module):
    plugin_module("named_plugin", "x = 1\n")
    assert bench("list", "-p", "no:lissa", "-p", "no:first-order").code == 0
    assert bench("list", "-p", "named_plugin", "-p", "no:named_plugin").code == 0


# -- friction (h): -p takes a .py file ---------------------------------------------------------------------------------


def test_dash_p_takes_a_python_file(bench, tmp_path, monkeypatch):
    from tests.test_plugins import estimator_source, listed

    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "my_plugin.py").write_text(estimator_source("from-file"))
    monkeypatch.chdir(workdir)
    for arg in ("./my_plugin.py", "my_plugin.py", str(workdir / "my_plugin.py")):
        result = bench("list", "-p", arg)
        assert result.code == 0, result.err
        assert listed(result.out)["from-file"] == "my_plugin"
    result = bench("list", "-p", "./my_plugin.py", "-p", "no:my_plugin")
    assert result.code == 0, result.err
    assert "from-file" not in listed(result.out)
    missing = bench("list", "-p", "./absent_plugin.py")
    assert_one_line_error(missing, '"./absent_plugin.py"', "no such file")


# -- defect 13: exit status --------------------------------------------------------------------------------------------


def test_exit_1_when_no_estimator_produced_a_score(bench, tiny, tmp_path, read_records):
    result = bench(*run_args(tmp_path, tiny, "--estimator", "lissa", "--set", "lissa.scale=0.001"))
    assert result.code == 1
    assert "Traceback" not in result.err
    records = read_records(tmp_path / "results")
    assert len(records) == 1 and records[0]["status"] == "failed"  # the failure is still recorded
    errors = [line for line in result.err_lines if line.startswith("bench: error:")]
    assert errors == ["bench: error: no estimator produced a score: all 1 records failed"]


def test_exit_0_when_one_estimator_of_several_produced_a_score(bench, tiny, tmp_path):
    result = bench(*run_args(tmp_path, tiny, "--estimator", "lissa,first-order", "--set", "lissa.scale=0.001"))
    assert result.code == 0, result.err


# -- friction (g): an exception in a task's code -----------------------------------------------------------------------

BROKEN_TASK = '''
import dataclasses
from benchmark import BuildContext, Protocol, Recipe, Task, hookimpl


@dataclasses.dataclass
class BrokenConfig:
    size: int = 3


class Broken(Task):
    """A task whose build rejects its option."""

    name = "broken"
    Config = BrokenConfig

    def build(self, context: BuildContext):
        raise ValueError(f"size {self.config.size} is not supported")

    def protocol(self) -> Protocol:
        return Protocol(test_point="max-loss", eval_size=5, retrain=Recipe(steps=10, lr=0.1))


@hookimpl
def bench_tasks():
    return [Broken]
'''


def test_exception_in_a_tasks_build_is_one_line(bench, plugin_module, tmp_path):
    plugin_module("broken_task", BROKEN_TASK)
    result = bench(
        "run",
        "-p",
        "broken_task",
        "--task",
        "broken",
        "--estimator",
        "first-order",
        "--no-progress",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
    )
    assert result.code == 1 and "Traceback" not in result.err
    errors = [line for line in result.err_lines if line.startswith("bench: error:")]
    assert errors == [
        "bench: error: task 'broken' (plugin \"broken_task\") failed in build: ValueError: size 3 is not supported"
    ], result.err
    verbose = bench(
        "run",
        "-v",
        "-p",
        "broken_task",
        "--task",
        "broken",
        "--estimator",
        "first-order",
        "--no-progress",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
    )
    assert verbose.code == result.code and "Traceback" in verbose.err


# -- friction (a): a user's run never writes into the source tree ------------------------------------------------------


def test_results_default_to_a_home_outside_the_source_tree(bench, tiny, tmp_path, monkeypatch, read_records):
    monkeypatch.delenv("BENCH_RESULTS_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "first-order",
        "--selection",
        "random",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert result.code == 0, result.err
    home = tmp_path / "data" / "bench"
    assert len(read_records(home / "results")) == 1
    assert (home / "iris.md").is_file()
    assert list(elsewhere.iterdir()) == []  # no leaderboards/ in the working directory
    assert f"records: {home / 'results' / 'iris'}" in result.out
    assert f"leaderboard: {home / 'iris.md'}" in result.out


def test_readme_first_command_leaves_a_fresh_clone_clean(tmp_path, repo_root):
    """``bench run --task iris`` (tiny) with the working directory in a fresh clone of the committed code."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_RESULTS_DIR", "PYTHONPATH")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        PYTHONPATH=str(clone),
        BENCH_CACHE_DIR=str(tmp_path / "cache"),
        BENCH_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    code = (
        "import sys, benchmark; from benchmark.cli import main; "
        f"assert benchmark.__file__.startswith({str(clone)!r}), benchmark.__file__; "
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = [
        "run",
        "--task",
        "iris",
        "--set",
        "iris.train_steps=300",
        "--set",
        "iris.retrain_steps=50",
        "--no-progress",
        "--threads",
        "1",
        "--estimator",
        "first-order",
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, check=True, capture_output=True, text=True
    ).stdout
    assert status == ""
    assert list((tmp_path / "data" / "bench" / "results" / "iris").glob("*.json"))


def test_publish_writes_the_committed_leaderboards_explicitly(bench, tiny, tmp_path, monkeypatch):
    import benchmark.common.paths

    published = tmp_path / "checkout" / "leaderboards"
    published.mkdir(parents=True)
    monkeypatch.setattr(benchmark.common.paths, "PUBLISHED_DIR", published)
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "first-order",
        "--selection",
        "random",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--publish",
    )
    assert result.code == 0, result.err
    assert len(list((published / "results" / "iris").glob("*.json"))) == 1
    board = (published / "iris.md").read_text()
    (published / "iris.md").unlink()
    again = bench("leaderboard", "--task", "iris", "--publish")
    assert again.code == 0, again.err
    assert (published / "iris.md").read_text() == board
    clash = bench("leaderboard", "--publish", "--results-dir", tmp_path / "other")
    assert_one_line_error(clash, "--publish", "--results-dir")


# -- friction (b): bench run prints this run's results -----------------------------------------------------------------


def test_run_prints_this_runs_results_not_every_record_on_disk(bench, tiny, tmp_path):
    common = (
        "--task",
        "iris",
        "--selection",
        "random",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "board" / "results",
    )
    assert bench("run", "--estimator", "exact", *common).code == 0
    result = bench("run", "--estimator", "first-order", *common)
    assert result.code == 0, result.err
    rows = [line for line in result.out.splitlines() if line.startswith("| `")]
    assert len(rows) == 1 and rows[0].startswith("| `first-order`"), result.out
    assert f"leaderboard: {tmp_path / 'board' / 'iris.md'} (2 records)" in result.out


# -- defect 1: unwritable or non-directory paths -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--cache-dir", "--results-dir"])
def test_a_file_where_a_directory_belongs_is_one_line_before_any_work(bench, tiny, tmp_path, flag):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    paths = {"--cache-dir": tmp_path / "cache", "--results-dir": tmp_path / "board" / "results"}
    for target in (a_file, a_file / "below"):
        paths[flag] = target
        result = bench(
            "run",
            "--task",
            "iris",
            "--estimator",
            "first-order",
            *tiny,
            *(str(x) for pair in paths.items() for x in pair),
        )
        assert result.code == 2
        assert_one_line_error(result, str(target), "not a directory")
        assert not (tmp_path / "cache").exists() and not (tmp_path / "board").exists()


def _read_only(monkeypatch, root: Path, below: bool = True) -> None:
    """``os.access`` says no write access to ``root`` (and below it) (tests may run as root, whom a chmod would not
    stop)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        path = Path(path).resolve()
        if mode & os.W_OK and (path == root.resolve() or below and path.is_relative_to(root.resolve())):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("flag", ["--results-dir", "leaderboard"])
def test_unwritable_results_or_leaderboard_directory_is_one_line_before_any_work(
    bench, tiny, tmp_path, monkeypatch, flag
):
    board = tmp_path / "board"
    (board / "results").mkdir(parents=True)
    _read_only(monkeypatch, board / "results" if flag == "--results-dir" else board, below=flag == "--results-dir")
    argv = [
        "run",
        "--task",
        "iris",
        "--estimator",
        "first-order",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        board / "results",
    ]
    result = bench(*argv)
    assert result.code == 2
    assert_one_line_error(result, str(board / "results") if flag == "--results-dir" else str(board), "not writable")
    assert not (tmp_path / "cache").exists()
    if flag == "leaderboard":
        assert bench(*argv, "--no-leaderboard").code == 0


def test_read_only_cache_lacking_an_entry_is_one_line(bench, tiny, tmp_path, monkeypatch):
    import benchmark.common.cache

    cache = tmp_path / "cache"
    cache.mkdir()
    _read_only(monkeypatch, cache)

    def refuse(self, path):
        raise PermissionError(13, "Permission denied", str(path.parent / f".{path.name}.lock"))

    monkeypatch.setattr(benchmark.common.cache.Cache, "lock", refuse)
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "first-order",
        *tiny,
        "--cache-dir",
        cache,
        "--results-dir",
        tmp_path / "results",
    )
    assert result.code == 1 and "Traceback" not in result.err
    errors = [line for line in result.err_lines if line.startswith("bench: error:")]
    assert len(errors) == 1 and str(cache) in errors[0] and "read-only" in errors[0], result.err
    assert any("read-only" in line and "warning" not in line for line in result.err_lines[:-1])


# -- friction (c): every progress bar says what it computes ------------------------------------------------------------


def test_lissa_progress_bars_are_labelled(bench, tmp_path):
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "lissa,first-order",
        "--selection",
        "random",
        "--set",
        "iris.train_steps=300",
        "--set",
        "iris.retrain_steps=50",
        "--set",
        "lissa.depth=200",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
        "--no-leaderboard",
    )
    assert result.code == 0, result.err
    segments = [part.strip() for line in result.err.split("\n") for part in line.split("\r") if part.strip()]
    bars = [i for i, part in enumerate(segments) if part.startswith("lissa")]
    assert bars, result.err
    assert all(segments[i].startswith(("lissa: 1 iHVP:", "lissa: 20 iHVPs:")) for i in bars), result.err
    logs = [i for i, part in enumerate(segments) if part.startswith("bench: estimator lissa: parameter change")]
    second = [i for i in bars if segments[i].startswith("lissa: 20 iHVPs")]
    assert second and logs and logs[0] < second[0], result.err


# -- friction (d): bench list shows whole summaries and what each option means ----------------------------------------


def test_list_shows_the_whole_first_paragraph(bench):
    result = bench("list")
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if line.strip().startswith("first-order"))
    assert line.endswith(
        "(cost: one gradient per training point, no curvature). Exact when ``H`` is a multiple of the identity."
    ), line


def test_list_options_say_what_each_option_means(bench):
    import dataclasses

    from benchmark.cli.listing import attribute_docs
    from benchmark.contracts.plugins import Registry, plugin_manager

    result = bench("list", "--options")
    assert result.code == 0, result.err
    assert (
        "first-order.scale = 1.0: ``c`` in ``H ~ c I``; it scales every score alike, so it changes no correlation."
        in result.out
    )
    registry = Registry(plugin_manager())
    for entries in (registry.tasks, registry.estimators):
        for name, entry in entries.items():
            documented = attribute_docs(entry.cls.Config)
            for field in dataclasses.fields(entry.cls.Config):
                assert documented.get(field.name), f"{name}.{field.name} has no description in its Attributes section"
                option = next(
                    line for line in result.out.splitlines() if line.strip().startswith(f"{name}.{field.name} =")
                )
                assert option.endswith(documented[field.name]), option


# -- friction (e): estimators without an iHVP --------------------------------------------------------------------------

NO_IHVP = '''
from benchmark import Estimator, hookimpl


class GradientDot(Estimator):
    """Gradient dot product, computed directly: no inverse-Hessian-vector product at all."""

    name = "gradient-dot"
    no_ihvp = "gradient similarity, no curvature"

    def influence(self, test_indices):
        problem = self._require_problem()
        return problem.train_gradient_products(problem.test_gradients(test_indices)) / problem.n_train


@hookimpl
def bench_estimators():
    return [GradientDot]
'''


def test_an_estimator_without_an_ihvp_reads_n_a(bench, plugin_module, tiny, tmp_path, read_records):
    plugin_module("no_ihvp_plugin", NO_IHVP)
    result = bench("-p", "no_ihvp_plugin", *run_args(tmp_path, tiny, "--estimator", "gradient-dot"))
    assert result.code == 0, result.err
    (record,) = read_records(tmp_path / "results")
    assert record["status"] == "ok" and isinstance(record["metrics"]["spearman"]["value"], float)
    reason = "n/a: estimator 'gradient-dot' has no iHVP (gradient similarity, no curvature)"
    for method in ("param_norm_pearson", "param_norm_spearman"):
        assert record["metrics"][method] == {"value": None, "undefined": reason}
    assert record["metrics"]["ihvp_relative_residual"] is None
    assert record["metrics"]["ihvp_residual_undefined"] == reason
    (row,) = [line for line in result.out.splitlines() if line.startswith("| `gradient-dot`")]
    assert row.count(reason) == 2, row


def test_no_ihvp_estimator_passes_check_estimator(plugin_module):
    from benchmark.contracts.testing import check_estimator

    plugin_module("no_ihvp_plugin", NO_IHVP)
    import no_ihvp_plugin

    check_estimator(no_ihvp_plugin.GradientDot)


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("    def influence(self, test_indices):\n        return None\n", ["Incomplete", "ihvp", "no_ihvp"]),
        ("    no_ihvp = 'no curvature'\n", ["Incomplete", "no_ihvp", "influence"]),
    ],
    ids=["neither-ihvp-nor-no-ihvp", "no-ihvp-without-influence"],
)
def test_an_incomplete_estimator_is_rejected_at_registration(bench, plugin_module, body, fragments):
    source = (
        "from benchmark import Estimator, hookimpl\n\n\nclass Incomplete(Estimator):\n    name = 'incomplete'\n"
        f"{body}\n\n@hookimpl\ndef bench_estimators():\n    return [Incomplete]\n"
    )
    plugin_module("incomplete_plugin", source)
    result = bench("list", "-p", "incomplete_plugin")
    assert_one_line_error(result, '"incomplete_plugin"', *fragments)


# -- friction (f): check_estimator -------------------------------------------------------------------------------------


def test_check_estimator_passes_the_example_plugin():
    from benchmark.contracts.testing import check_estimator
    from examples.diagonal_estimator import Diagonal

    check_estimator(Diagonal)


def test_check_estimator_names_the_estimator_in_a_shape_failure():
    from benchmark import Estimator
    from benchmark.contracts.testing import check_estimator

    class Short(Estimator):
        name = "short"

        def ihvp(self, vectors):
            return vectors[:, :-1]

    with pytest.raises(AssertionError, match=r"^short: ihvp shape \(3, 5\), expected \(3, 6\)$"):
        check_estimator(Short)


def test_check_estimator_fails_a_class_without_a_name():
    from benchmark import Estimator
    from benchmark.contracts.testing import check_estimator

    class Nameless(Estimator):
        def ihvp(self, vectors):
            return vectors.clone()

    with pytest.raises(AssertionError, match="Nameless has no name"):
        check_estimator(Nameless)


def test_check_estimator_documents_min_correlation():
    from benchmark.contracts.testing import check_estimator

    assert "min_correlation:" in check_estimator.__doc__


def test_check_estimator_prints_no_torch_warning(repo_root):
    code = (
        "from benchmark.contracts.testing import check_estimator; from examples.diagonal_estimator import Diagonal; "
        "check_estimator(Diagonal)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr


# -- friction (a): bench study and bench report write the committed files only with --publish ---------------------


def test_study_and_report_default_to_the_users_home(bench, tmp_path, monkeypatch):
    import benchmark.common.paths
    from tests.test_study import TINY_STUDY

    published = tmp_path / "checkout" / "leaderboards"
    (published / "studies").mkdir(parents=True)
    monkeypatch.setattr(benchmark.common.paths, "PUBLISHED_DIR", published)
    monkeypatch.delenv("BENCH_RESULTS_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    declaration = tmp_path / "tiny.yaml"
    declaration.write_text(TINY_STUDY.format(name="tiny").replace("seeds: [0, 1]", "seeds: [0]"))
    home = tmp_path / "data" / "bench"

    result = bench("study", declaration, "--cache-dir", tmp_path / "cache", "--no-progress")
    assert result.code == 0, result.err
    assert (home / "studies" / "tiny.csv").is_file()
    report = bench("report")
    assert report.code == 0, report.err
    assert (home / "report.html").is_file() and (home / "README.md").is_file()
    assert list(elsewhere.iterdir()) == [] and list((published / "studies").iterdir()) == []

    result = bench("study", declaration, "--cache-dir", tmp_path / "cache", "--no-progress", "--publish")
    assert result.code == 0, result.err
    assert (published / "studies" / "tiny.csv").is_file()
    report = bench("report", "--publish")
    assert report.code == 0, report.err
    assert (published / "studies" / "report.html").is_file() and (published / "README.md").is_file()
    clash = bench("report", "--publish", "--readme", tmp_path / "x.md")
    assert_one_line_error(clash, "--publish", "--readme")


def test_a_complete_read_only_cache_serves_a_whole_run(bench, tiny, tmp_path, monkeypatch, read_records):
    import benchmark.common.cache

    cache = tmp_path / "cache"
    argv = ["run", "--task", "iris", "--estimator", "exact,first-order", *tiny, "--cache-dir", cache]
    assert bench(*argv, "--results-dir", tmp_path / "first").code == 0
    _read_only(monkeypatch, cache)
    refused = []

    def refuse(*args, **kwargs):
        refused.append(args)
        raise PermissionError(13, "Permission denied", str(cache / "refused"))

    monkeypatch.setattr(benchmark.common.cache, "atomic_write", refuse)
    monkeypatch.setattr(benchmark.common.cache.Cache, "lock", refuse)
    result = bench(*argv, "--results-dir", tmp_path / "second")
    assert result.code == 0, result.err
    assert refused == []
    assert len(read_records(tmp_path / "second")) == 4
    assert any("read-only" in line for line in result.err_lines)


# -- defect 4: the user's Ctrl-C still stops a run --------------------------------------------------------------------


def test_gt_status_of_a_file_is_one_line(bench, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    result = bench("gt", "--status", "--cache-dir", a_file)
    assert result.code == 2
    assert_one_line_error(result, str(a_file), "not a directory")
