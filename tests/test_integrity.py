"""Hand-edited or foreign files the harness reads: result records, config files, cache entries, dataset files.

Each is one line naming the file (and the field), never a traceback; a damaged cache entry is recomputed.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_one_line_error

from benchmark.common.cache import Cache, digest
from benchmark.common.errors import DataError
from benchmark.contracts import records

TEMPLATE = sorted((REPO_ROOT / "leaderboards" / "results" / "iris").glob("*-exact-random.json"))[0]
"""A committed, valid Iris record: the template of the hand-edited ones."""


def _valid() -> dict:
    return json.loads(TEMPLATE.read_text())


def _without(field: str) -> dict:
    record = _valid()
    del record[field]
    return record


def _metric(value: object) -> dict:
    record = _valid()
    record["metrics"]["spearman"]["value"] = value
    return record


BAD_RECORDS = {
    "list": ([1, 2], "top level"),
    "string": ("a record", "top level"),
    "no-estimator": (_without("estimator"), "estimator"),
    "no-selection": (_without("selection"), "selection"),
    "metric-text": (_metric("high"), "metrics.spearman"),
    "metric-list": (_metric([0.5]), "metrics.spearman"),
    "residual-text": (
        {**_valid(), "metrics": {**_valid()["metrics"], "ihvp_relative_residual": "1e-3"}},
        "metrics.ihvp_relative_residual",
    ),
    "estimator-string": ({**_valid(), "estimator": "exact"}, "estimator"),
    "no-schema": ({k: v for k, v in _valid().items() if k != "schema"}, "schema"),
}


def _results_with(tmp_path: Path, bad: object) -> tuple[Path, Path]:
    results = tmp_path / "board" / "results"
    (results / "iris").mkdir(parents=True)
    shutil.copyfile(TEMPLATE, results / "iris" / TEMPLATE.name)
    path = results / "iris" / "zz-hand-edited.json"
    path.write_text(json.dumps(bad))
    return results, path


def test_every_committed_record_matches_the_schema():
    paths = sorted((REPO_ROOT / "leaderboards" / "results").glob("*/*.json"))
    assert paths
    assert {str(p): records.validate(json.loads(p.read_text())) for p in paths} == {str(p): None for p in paths}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_is_skipped_with_one_warning_naming_file_and_field(bench, tmp_path, case):
    bad, field = BAD_RECORDS[case]
    results, path = _results_with(tmp_path, bad)
    result = bench("leaderboard", "--results-dir", results)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    assert str(path) in result.err_lines[0] and field in result.err_lines[0], result.err
    assert "skipping" in result.err_lines[0]
    assert "from 1 result records" in (results.parent / "iris.md").read_text()


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_is_an_error_with_strict(bench, tmp_path, case):
    bad, field = BAD_RECORDS[case]
    results, path = _results_with(tmp_path, bad)
    result = bench("leaderboard", "--results-dir", results, "--strict")
    assert_one_line_error(result, str(path), field)
    assert not (results.parent / "iris.md").exists()


def test_records_load_names_the_file_and_field_for_a_list(tmp_path):
    results, path = _results_with(tmp_path, ["schema", 1])
    with pytest.raises(DataError, match="zz-hand-edited.json: top level"):
        records.load(results, "iris", strict=True)
    assert [r["run_id"] for r in records.load(results, "iris")] == [_valid()["run_id"]]


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe not utf-8"], ids=["truncated", "not-utf8"])
def test_unreadable_record_is_skipped_with_a_warning(bench, tmp_path, raw):
    results, path = _results_with(tmp_path, None)
    path.write_bytes(raw)
    result = bench("leaderboard", "--results-dir", results)
    assert result.code == 0, result.err
    assert len(result.err_lines) == 1 and str(path) in result.err_lines[0], result.err


def test_run_with_a_bad_record_in_its_results_dir_writes_and_renders(bench, tiny, tmp_path, read_records):
    results, path = _results_with(tmp_path, _without("selection"))
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
        "--results-dir",
        results,
    )
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert any(str(path) in line and "selection" in line for line in result.err_lines), result.err
    written = [r for r in read_records(results) if r.get("estimator", {}).get("name") == "first-order"]
    assert len(written) == 1
    assert "`first-order`" in (results.parent / "iris.md").read_text()


# -- defect 6: nothing to render ---------------------------------------------------------------------------------


def test_leaderboard_of_an_empty_results_dir_says_so(bench, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    line = assert_one_line_error(bench("leaderboard", "--results-dir", results), "nothing to render", str(results))
    assert line


# -- defect 7: a config file that is not UTF-8 -------------------------------------------------------------------


def test_config_file_that_is_not_utf8_is_one_line(bench, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes("task: iris\n# caf\xe9 in Latin-1\n".encode("latin-1"))
    result = bench("run", "--config", config, "--cache-dir", tmp_path / "cache")
    assert result.code == 2
    assert_one_line_error(result, str(config), "UTF-8")


# -- defect 8: a tensor file the safe loader refuses, its checksum rewritten to match ----------------------------


def _forge(cache: Cache, kind: str, key: dict, obj: object) -> Path:
    """Store ``obj`` as the tensor file of ``kind``/``key`` with a matching checksum (a tampered, re-signed entry)."""
    stem = cache.root / kind / digest(key)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    blob = buffer.getvalue()
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".pt").write_bytes(blob)
    cache.write_json(stem.with_suffix(".json"), key, {"blob_sha256": hashlib.sha256(blob).hexdigest()})
    return stem.with_suffix(".pt")


FORGED = {
    "foreign-class": {"theta": fractions.Fraction(1, 3)},
    "not-a-mapping": [torch.ones(3)],
    "not-tensors": {"theta": 3},
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_re_signed_tensor_file_is_a_corrupt_entry_recomputed(tmp_path, caplog, case):
    cache = Cache(tmp_path / "cache")
    key = {"task": "forged", "case": case}
    path = _forge(cache, "optima", key, FORGED[case])
    calls = []

    def compute():
        calls.append(1)
        return {"theta": torch.arange(3.0)}

    with caplog.at_level(logging.WARNING, logger="bench"):
        result = cache.tensors("optima", key, compute)
    assert calls == [1]
    assert torch.equal(result["theta"], torch.arange(3.0))
    assert "weights_only" not in caplog.text
    assert f"corrupt cache file {path}" in caplog.text
    assert len(caplog.records) == 1

    def never():
        raise AssertionError("recomputed a second time")

    assert torch.equal(cache.tensors("optima", key, never)["theta"], torch.arange(3.0))  # stored again


def test_re_signed_optimum_is_retrained_by_bench_run_without_a_traceback(bench, tiny, tmp_path):
    common = (
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
        "--results-dir",
        tmp_path / "results",
        "--no-leaderboard",
    )
    assert bench(*common).code == 0
    (meta,) = (tmp_path / "cache" / "optima").glob("*.json")
    key = json.loads(meta.read_text())["key"]
    _forge(Cache(tmp_path / "cache"), "optima", key, {"theta": fractions.Fraction(1, 3)})
    result = bench(*common)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "weights_only" not in result.err
    assert any("corrupt cache file" in line for line in result.err_lines), result.err


# -- defect 9: a leave-one-out entry filed under another index ---------------------------------------------------


def test_misfiled_entry_is_corrupt_when_read_and_in_the_status(tmp_path):
    from benchmark.groundtruth.status import cache_status

    cache = Cache(tmp_path / "cache")
    base = {
        "task": "iris",
        "version": 1,
        "config": {"width": 5},
        "seed": 0,
        "test_index": 7,
        "recipe": {"steps": 50, "seed": None},
        "recipe_version": 1,
        "dtype": "torch.float64",
    }
    directory = cache.root / "loo" / digest(base)
    payload = {"loss_change": 0.5, "test_loss": 1.0, "param_change_norm": 0.1}
    for i in (0, 1, 2):
        cache.write_json(directory / f"{i}.json", {**base, "removed": i}, payload)
    shutil.copyfile(directory / "0.json", directory / "1.json")  # intact, checksum fine, but the entry of point 0
    foreign = {**base, "seed": 99}
    cache.write_json(directory / "2.json", {**foreign, "removed": 2}, payload)  # another ground truth's entry
    (row,) = cache_status(cache)
    assert (row["entries"], row["corrupt"]) == (1, 2)
    assert row["task"] == "iris v1"


def test_misfiled_entry_is_recomputed_by_the_ground_truth(tmp_path, caplog):
    from benchmark.groundtruth.engine import GroundTruth

    cache = Cache(tmp_path / "cache")
    ground_truth = GroundTruth.__new__(GroundTruth)  # only the cache-entry methods are exercised
    ground_truth.cache, ground_truth.key = cache, {"task": "iris", "test_index": 7}
    ground_truth.directory = cache.root / "loo" / digest(ground_truth.key)
    ground_truth._corrupt = set()
    from benchmark.groundtruth.engine import GroundTruthStats, LooEffect

    ground_truth.stats = GroundTruthStats()
    ground_truth._store(LooEffect(0, 0.5, 1.0, 0.1))
    assert ground_truth._load(0) == LooEffect(0, 0.5, 1.0, 0.1)
    shutil.copyfile(ground_truth.directory / "0.json", ground_truth.directory / "1.json")
    with caplog.at_level(logging.WARNING, logger="bench"):
        assert ground_truth._load(1) is None
        assert ground_truth.missing([0, 1]) == [1]
    assert ground_truth.stats.corrupt == 1
    assert "1.json" in caplog.text and "recomputing" in caplog.text


# -- defect 10: every cached artefact is computed once by concurrent processes ------------------------------------

_CONCURRENT = """
import sys, time, torch
from pathlib import Path
from benchmark.common.cache import Cache
log = Path(sys.argv[2])
def compute():
    with log.open("a") as f:
        f.write("computed\\n")
    time.sleep(3)
    return {"theta": torch.arange(4.0)}
Path(sys.argv[3]).touch()
while not Path(sys.argv[4]).exists():
    time.sleep(0.01)
out = Cache(sys.argv[1]).tensors("optima", {"task": "shared"}, compute)
assert torch.equal(out["theta"], torch.arange(4.0))
"""


@pytest.mark.slow
def test_two_processes_compute_a_cached_optimum_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_CONCURRENT)
    computed, go = tmp_path / "computed.log", tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "cache"), str(computed), str(tmp_path / f"ready{k}"), str(go)],
            cwd=REPO_ROOT,
        )
        for k in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    assert computed.read_text().splitlines() == ["computed"]


def test_reading_a_complete_cache_creates_no_file(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.tensors("hessians", {"task": "h"}, lambda: {"hessian": torch.eye(3)})
    before = sorted(p.relative_to(cache.root) for p in cache.root.rglob("*") if p.is_file())
    for path in cache.root.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    cache.root.chmod(0o555)
    try:
        loaded = cache.tensors("hessians", {"task": "h"}, lambda: pytest.fail("recomputed a valid entry"))
    finally:
        for path in [cache.root, *cache.root.rglob("*")]:
            path.chmod(0o755)
    assert torch.equal(loaded["hessian"], torch.eye(3))
    assert sorted(p.relative_to(cache.root) for p in cache.root.rglob("*") if p.is_file()) == before


def test_undefined_correlation_without_a_reason_renders(bench, tmp_path):
    record = _valid()
    record["metrics"]["spearman"] = {"value": None, "undefined": None}
    results, path = _results_with(tmp_path, record)
    result = bench("leaderboard", "--results-dir", results, "--strict")
    assert result.code == 0, result.err
    assert "undefined (no value)" in (results.parent / "iris.md").read_text()


def test_records_a_run_writes_match_the_schema_ok_and_failed(bench, tiny, tmp_path, read_records):
    results = tmp_path / "board" / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact,cg,lissa,first-order",
        "--set",
        "lissa.scale=0.001",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
        "--no-leaderboard",
    )
    written = read_records(results)
    assert {r["status"] for r in written} == {"ok", "failed"}, result.err
    assert {(r["estimator"]["name"], r["selection"]["kind"]): records.validate(r) for r in written} == {
        (r["estimator"]["name"], r["selection"]["kind"]): None for r in written
    }
    strict = bench("leaderboard", "--results-dir", results, "--strict")
    assert strict.code == 0, strict.err


def test_a_run_on_a_complete_cache_writes_nothing_into_it(bench, tiny, tmp_path):
    """A complete cache is only read: no lock file either (so a read-only copy of one works)."""
    cache = tmp_path / "cache"
    common = (
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact",
        "--selection",
        "random",
        *tiny,
        "--cache-dir",
        cache,
        "--results-dir",
        tmp_path / "results",
        "--no-leaderboard",
    )
    assert bench(*common).code == 0
    for lock in cache.rglob("*.lock"):  # as a cache copied or unpacked without its lock files
        lock.unlink()
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    result = bench(*common)
    assert result.code == 0, result.err
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def test_a_failed_computation_releases_its_lock_and_stores_nothing(tmp_path):
    cache = Cache(tmp_path / "cache")

    def fail():
        raise KeyError("not available")

    with pytest.raises(KeyError):
        cache.tensors("hessians", {"task": "h"}, fail)
    assert not (cache.root / "hessians").exists()
    lock = cache.lock(cache.root / "hessians" / f"{digest({'task': 'h'})}.pt")
    lock.acquire(timeout=0)  # released by the failed computation
    lock.release()
    assert torch.equal(
        Cache(cache.root).tensors("hessians", {"task": "h"}, lambda: {"h": torch.ones(2)})["h"], torch.ones(2)
    )
