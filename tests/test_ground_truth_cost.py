"""The generated table of what each ground truth costs (``scripts/ground_truth_cost.py``)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "ground_truth_cost.py"


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )


def test_the_committed_table_is_fresh():
    result = run("--check")
    assert result.returncode == 0, result.stderr


def test_a_run_with_both_ground_truths_gives_one_row_of_measured_costs(bench, tiny, tmp_path, read_records):
    result = bench(
        "run",
        "--task",
        "iris",
        *tiny,
        "--estimators",
        "exact",
        "--selection",
        "top",
        "--truth",
        "loo,lds",
        "--lds-subsets",
        "5",
        "--lds-test-points",
        "10",
        "--no-leaderboard",
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
    )
    assert result.code == 0, result.err
    lds = next(r for r in read_records(tmp_path / "results") if r["selection"]["kind"] == "lds")["ground_truth"]
    output = tmp_path / "cost.md"
    assert run("--results-dir", tmp_path / "results", "--output", output).returncode == 0
    (row,) = [line for line in output.read_text().splitlines() if line.startswith("| iris |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    per_model = lds["seconds"] / lds["computed"]
    assert cells[2] == "5 x 1" and cells[3] == f"{60 / per_model:.1f}" and cells[5] == "10"
    assert cells[6] == f"{per_model * 5 / 10:,.2f}" and cells[7] != "-"  # the leave-one-out run of the same setting
    stale = run("--check", "--results-dir", tmp_path / "results", "--output", tmp_path / "missing.md")
    assert stale.returncode == 1 and "stale" in stale.stderr
