"""Shared fixtures of the test suite.

Every test runs with ``$BENCH_CACHE_DIR`` and ``$BENCH_RESULTS_DIR`` pointing under its own ``tmp_path``, so that no
test can write into the repository's ``leaderboards/`` or the user's ``~/.cache`` even if it forgets
``--cache-dir``/``--results-dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY = ("--set", "iris.train_steps=300", "--set", "iris.retrain_steps=50", "--no-progress")
"""A tiny Iris configuration: an end-to-end run takes about a second."""


@pytest.fixture(autouse=True)
def _bench_isolation(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every test away from the real cache, results and plugin environment; one torch thread.

    The tiny problems gain nothing from intra-op threads, and on a 2-core machine shared with other processes
    OpenMP's spinning threads slow them down by two orders of magnitude.
    """
    sandbox = tmp_path_factory.mktemp("bench-env")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(sandbox / "cache"))
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(sandbox / "leaderboards" / "results"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox / "xdg-cache"))
    monkeypatch.delenv("BENCH_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # plugin loading may prepend the working directory
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def tiny() -> list[str]:
    """Command-line options of a tiny Iris run (few training and re-training steps, no progress bars)."""
    return list(TINY)


@dataclasses.dataclass
class BenchResult:
    """Exit code and captured output of one in-process ``bench`` call."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def bench(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., BenchResult]]:
    """Run ``benchmark.cli.main(argv)`` in-process: ``bench("run", "--task", "iris", ...)`` -> BenchResult."""
    from benchmark.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def call(*argv: str | Path) -> BenchResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return BenchResult(code, captured.out, captured.err)

    yield call
    # main() points the root logger at the captured stderr: put back what was there before
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Path]]:
    """Factory writing an importable module ``name`` with ``source`` under tmp_path (forgotten again afterwards)."""
    directory = tmp_path / "plugin_modules"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    names: list[str] = []

    def make(name: str, source: str) -> Path:
        path = directory / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        names.append(name)
        sys.modules.pop(name, None)
        import importlib

        importlib.invalidate_caches()
        return path

    yield make
    for name in names:
        sys.modules.pop(name, None)


def _read_records(results_dir: Path, task: str = "iris") -> list[dict]:
    import json

    return [json.loads(path.read_text()) for path in sorted((Path(results_dir) / task).glob("*.json"))]


@pytest.fixture
def read_records() -> Callable[..., list[dict]]:
    """``read_records(results_dir, task="iris")``: every result record written there, parsed."""
    return _read_records


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread inside the block (for module-scoped fixtures, which run outside the autouse fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_one_line_error(result: BenchResult, *fragments: str) -> str:
    """``result`` failed with exactly one ``bench: error:`` line containing every fragment, and no traceback."""
    assert result.code != 0
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("bench: error:"), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
