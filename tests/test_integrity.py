"""Hand-edited or foreign files the harness reads: result records, config files, cache entries, dataset files.

Each is one line naming the file (and the field), never a traceback; a damaged cache entry is recomputed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark import records
from benchmark.errors import DataError
from conftest import REPO_ROOT, assert_one_line_error

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
    "residual-text": ({**_valid(), "metrics": {**_valid()["metrics"], "ihvp_relative_residual": "1e-3"}},
                      "metrics.ihvp_relative_residual"),
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
    result = bench("run", "--task", "iris", "--estimator", "first-order", "--selection", "random", *tiny,
                   "--cache-dir", tmp_path / "cache", "--results-dir", results)
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
