"""The README's generated headline table (``scripts/headline.py``)."""

from __future__ import annotations

import json
import shutil
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


def test_a_last_layer_run_does_not_replace_the_whole_model_in_the_headline(tmp_path):
    """The headline is each estimator over the whole model: a newer ``layers: last`` record of the same estimator and
    setting (a leaderboard row of its own) leaves its cell as it was."""
    results = tmp_path / "results" / "iris"
    results.mkdir(parents=True)
    source = sorted((RESULTS / "iris").glob("*-exact-top.json"))[0]
    shutil.copy(source, results / source.name)
    record = json.loads(source.read_text())
    before = float(record["metrics"]["spearman"]["value"])
    record["date"] = "2999-01-01T00:00:00Z"
    record["run_id"] = "29990101T000000Z-000000"
    record["estimator"]["hyperparameters"]["layers"] = "last"
    record["metrics"]["spearman"]["value"] = -0.5
    (results / "29990101T000000Z-000000-exact-top.json").write_text(json.dumps(record))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- headline:start -->\n<!-- headline:end -->\n")
    result = run("--readme", readme, "--results-dir", tmp_path / "results")
    assert result.returncode == 0, result.stderr
    row = next(line for line in readme.read_text().splitlines() if line.startswith("| iris |"))
    assert f"| {before:.2f} |" in row and "-0.50" not in row


def test_a_peer_adapters_run_is_not_a_headline_column(tmp_path):
    """The headline shows the built-in estimators; a plugin's (the peer adapters') records stay in the leaderboards."""
    results = tmp_path / "results" / "iris"
    results.mkdir(parents=True)
    source = sorted((RESULTS / "iris").glob("*-exact-top.json"))[0]
    shutil.copy(source, results / source.name)
    record = json.loads(source.read_text())
    record["run_id"] = "29990101T000000Z-000000"
    record["estimator"]["name"] = "dattri-explicit"
    record["estimator"]["plugin"] = "benchmark.peers.adapters"
    (results / "29990101T000000Z-000000-dattri-explicit-top.json").write_text(json.dumps(record))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- headline:start -->\n<!-- headline:end -->\n")
    result = run("--readme", readme, "--results-dir", tmp_path / "results")
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "`exact`" in text and "dattri-explicit" not in text


def test_effects_measured_in_float32_and_float64_get_a_row_each(tmp_path):
    """A setting whose leave-one-out effects were measured in float32 (before the ground truth evaluated test losses
    in float64) and again in float64 has a row for each, the precision in the last column: never one mixed row."""
    results = tmp_path / "results" / "iris"
    results.mkdir(parents=True)
    source = sorted((RESULTS / "iris").glob("*-exact-top.json"))[0]
    old = json.loads(source.read_text())
    old["ground_truth"]["cache_key"]["dtype"] = "torch.float32"
    old["ground_truth"].pop("test_loss_dtype", None)
    (results / source.name).write_text(json.dumps(old))
    new = json.loads(source.read_text())
    new["date"], new["run_id"] = "2999-01-01T00:00:00Z", "29990101T000000Z-000000"
    new["ground_truth"]["test_loss_dtype"] = "float64"
    new["metrics"]["spearman"]["value"] = -0.5
    (results / "29990101T000000Z-000000-exact-top.json").write_text(json.dumps(new))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- headline:start -->\n<!-- headline:end -->\n")
    result = run("--readme", readme, "--results-dir", tmp_path / "results")
    assert result.returncode == 0, result.stderr
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| iris |")]
    assert len(rows) == 2
    assert [row.rstrip(" |").rsplit("| ", 1)[1] for row in rows] == ["float32", "float64"]
    assert "-0.50" in rows[1] and "-0.50" not in rows[0]
