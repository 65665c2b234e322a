"""One way to do each thing: the asv suite evaluates through the runner (with the protocol's hyperparameters), one
provenance module, one Markdown table helper, one list splitter, one rule for when our code's results are stale."""

from __future__ import annotations

import inspect
from pathlib import Path

from asv_bench import cases
from benchmark.common import config, markdown, provenance
from benchmark.contracts import records
from benchmark.evaluation import estimation, recording, timing
from benchmark.evaluation.runner import Run
from benchmark.peers import speed_blocks, speed_vs_peers
from benchmark.studies import run as study
from tests.conftest import REPO_ROOT


def test_the_asv_suite_resolves_hyperparameters_as_bench_run(monkeypatch, tmp_path: Path) -> None:
    """MNIST's protocol damping (0.01) reaches the suite's estimators, as it reaches `bench run`'s."""
    monkeypatch.setattr(Run, "build_problem", lambda self: (None, None, 0, 0.0))  # no training needed here
    run, _, _, _ = cases.build("mnist/lenet", "small", tmp_path / "cache", estimators=["cg", "lissa", "exact"])
    assert [e.estimator.config.damping for e in run.estimators] == [0.01, 0.01, 0.01]
    assert [e.hyperparameters["damping"] for e in run.estimators] == [0.01, 0.01, 0.01]
    iris, _, _, _ = cases.build("iris", "small", tmp_path / "cache", estimators=["cg"])
    assert iris.estimators[0].estimator.config.damping == 0.001  # Iris states no damping: the estimator's default


def test_the_asv_suite_calls_the_runner_steps() -> None:
    evaluate = inspect.getsource(cases.evaluate)
    for step in ("evaluate_estimator(", "ihvp_residuals(", 'select("top"', "score_selection(", "run.ground_truths("):
        assert step in evaluate, step
    source = Path(inspect.getsourcefile(cases)).read_text()
    for private in ("DenseHessian", "correlations(", "GroundTruth("):
        assert private not in source, private


def test_one_markdown_table_helper() -> None:
    assert markdown.table(["a", "b"], [[1, ""], ["x", "y"]]) == "| a | b |\n|---|---|\n| 1 |  |\n| x | y |"
    for module in (timing, speed_vs_peers, speed_blocks):
        source = Path(inspect.getsourcefile(module)).read_text()
        assert '"|---' not in source and '"|" + "|".join(' not in source, module.__name__


def test_one_provenance_and_one_splitter() -> None:
    assert records.git_commit is provenance.git_commit and records.environment is provenance.environment
    assert "provenance.commit_label" in inspect.getsource(speed_vs_peers.current_commit)
    assert "provenance.source_digest" in inspect.getsource(speed_vs_peers.our_code)
    assert "provenance.source_digest" in inspect.getsource(study.code_digest)
    assert config.split_names(" a, b,,c ") == ["a", "b", "c"]
    for path in (REPO_ROOT / "benchmark").rglob("*.py"):
        assert "def _split(" not in path.read_text(), path
        assert "def git_commit(" not in path.read_text() or path.name == "provenance.py", path
    assert estimation.evaluate_estimator.__doc__ and recording.score_selection.__doc__


def test_source_digest_follows_code_not_docstrings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Doc."""\n\ndef f():\n    """Doc."""\n    return 1  # a comment\n')
    before = provenance.source_digest([module], tmp_path)
    module.write_text('"""Other doc."""\n\ndef f():\n    """Changed."""\n    return 1\n')
    assert provenance.source_digest([module], tmp_path) == before
    module.write_text('"""Other doc."""\n\ndef f():\n    return 2\n')
    assert provenance.source_digest([module], tmp_path) != before
