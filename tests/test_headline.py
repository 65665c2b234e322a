"""The README's generated headline table (``scripts/headline.py``)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "headline.py"
RESULTS = REPO_ROOT / "leaderboards" / "results"


def run(*args: object, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_the_committed_readme_headline_is_fresh():
    result = run("--check", "--readme", REPO_ROOT / "README.md", "--results-dir", RESULTS)
    assert result.returncode == 0, result.stderr


def test_stale_or_missing_headline_is_caught_and_rewritten(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline:start -->\nSTALE-HEADLINE\n<!-- headline:end -->\nrest\n")
    stale = run("--check", "--readme", readme, "--results-dir", RESULTS)
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert run("--readme", readme, "--results-dir", RESULTS).returncode == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "STALE-HEADLINE" not in text
    assert "| iris | depth 1, width 5, relu, with weight decay |" in text
    assert run("--check", "--readme", readme, "--results-dir", RESULTS).returncode == 0
    readme.write_text("no markers\n")
    missing = run("--readme", readme, "--results-dir", RESULTS)
    assert missing.returncode == 2 and "headline:start" in missing.stderr
