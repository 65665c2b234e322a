"""The typed record schema (:class:`benchmark.contracts.records.Record`): the validator is derived from it, what the
runner writes conforms to it (every field declared, every type right), committed records stay valid, old versions load
through :data:`benchmark.contracts.records.MIGRATIONS`, and a field added to a config does not split a leaderboard."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from benchmark.contracts import records
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.evaluation import leaderboard
from tests.conftest import REPO_ROOT

COMMITTED = sorted((REPO_ROOT / "leaderboards" / "results").glob("*/*.json"))
IRIS_CG_TOP = next(p for p in COMMITTED if p.parent.name == "iris" and p.name.endswith("-cg-top.json"))


def test_the_validator_checks_what_the_typed_schema_declares() -> None:
    required = records.Record.__required_keys__
    assert set(records.SCHEMA) == set(required)  # the record's required fields, in its declared order
    assert list(records.SCHEMA) == [name for name in records.Record.__annotations__ if name in required]
    for name in records.Record.__optional_keys__:
        assert name in records.OPTIONAL
    assert records.SCHEMA["status"] == records.STATUSES == ("ok", "failed", "skipped")
    assert records.SCHEMA["diagnostics"]["problem"]["converged"] == (bool,)
    assert records.OPTIONAL["metrics.spearman"] == ("correlation",)
    assert records.OPTIONAL["points.train_indices"] == (list,)  # a field of a mapping that may be null: where present


def test_records_a_run_writes_conform_to_the_typed_schema(bench, tiny, tmp_path, read_records) -> None:
    """ok, failed and skipped records, with two ground-truth seeds (ceilings, per-seed effects): each one valid and
    without a field the schema does not declare."""
    results = tmp_path / "results"
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimator",
        "exact,cg,lissa,first-order",
        "--set",
        "lissa.scale=0.001",
        "--set",
        "exact.max_params=10",
        "--gt-seeds",
        "2",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        results,
        "--no-leaderboard",
    )
    written = read_records(results)
    assert {r["status"] for r in written} == {"ok", "failed", "skipped"}, result.err
    for record in written:
        name = (record["estimator"]["name"], record["selection"]["kind"])
        assert records.validate(record) is None, name
        assert records.undeclared(record) == [], name
        assert record["schema"] == records.SCHEMA_VERSION
    ok = next(r for r in written if r["status"] == "ok")
    assert ok["metrics"]["ceiling"]["spearman"]["value"] is not None and ok["points"]["retrained_per_seed"]


def test_committed_records_are_valid_and_fully_declared() -> None:
    assert COMMITTED
    for path in COMMITTED:
        record = json.loads(path.read_text())
        assert records.validate(record) is None, path
        assert records.undeclared(record) == [], path


def test_undeclared_names_fields_outside_the_schema() -> None:
    record = json.loads(IRIS_CG_TOP.read_text())
    record["extra"] = 1
    record["ground_truth"]["new_field"] = 2
    record["estimator"]["hyperparameters"]["anything"] = 3  # a free mapping
    assert sorted(records.undeclared(record)) == ["extra", "ground_truth.new_field"]


def test_an_old_schema_version_loads_through_its_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = json.loads(IRIS_CG_TOP.read_text())
    old = {**copy.deepcopy(record), "schema": 0, "timing": record["timings"]}
    del old["timings"]
    (tmp_path / "iris").mkdir()
    (tmp_path / "iris" / "old.json").write_text(json.dumps(old))
    assert records.load(tmp_path, "iris") == []  # no step from version 0: skipped as invalid, as before

    def step(record: dict) -> dict:
        record = dict(record)
        record["timings"] = record.pop("timing")
        return {**record, "schema": 1}

    monkeypatch.setitem(records.MIGRATIONS, 0, step)
    (loaded,) = records.load(tmp_path, "iris", strict=True)
    assert loaded["schema"] == records.SCHEMA_VERSION and loaded["timings"] == record["timings"]


def _defaults() -> tuple[dict, dict]:
    registry = Registry(plugin_manager())
    task = dataclasses.asdict(registry.task("iris").Config())
    estimators = {name: dataclasses.asdict(entry.cls.Config()) for name, entry in registry.estimators.items()}
    return task, estimators


def test_a_field_added_to_a_config_does_not_show_a_setting_twice() -> None:
    """An older record without a field that a config gained since (at its default in the newer record) is the same
    setting: one section, one row per estimator and selection, the newest record's numbers."""
    task_defaults, estimator_defaults = _defaults()
    old = json.loads(IRIS_CG_TOP.read_text())
    # written before cg's config gained the fields it now has beyond these (their values were then the defaults)
    old["estimator"]["hyperparameters"] = {
        k: v for k, v in old["estimator"]["hyperparameters"].items() if k in ("damping", "max_iter", "tol")
    }
    new = copy.deepcopy(old)
    new["run_id"], new["date"] = "20991231T000000Z-aaaaaa", "2099-12-31T00:00:00+00:00"
    new["estimator"]["hyperparameters"] = {**estimator_defaults["cg"], **old["estimator"]["hyperparameters"]}
    new["metrics"]["spearman"]["value"] = 0.123456
    field = next(k for k, v in old["task"]["config"].items() if task_defaults.get(k) == v)
    del old["task"]["config"][field]  # written before the task's config had this field
    assert set(new["estimator"]["hyperparameters"]) > set(old["estimator"]["hyperparameters"])

    text = leaderboard.render([old, new], "iris", task_defaults, (), estimator_defaults)
    assert text.count("\n## ") == 1
    rows = [line for line in text.splitlines() if line.startswith("| `cg`")]
    assert len(rows) == 1 and "0.123" in rows[0]
    # a value that differs from the default is another setting, as before
    other = copy.deepcopy(new)
    other["task"]["config"][field] = "something else"
    assert leaderboard.render([old, other], "iris", task_defaults, (), estimator_defaults).count("\n## ") == 2
    # without defaults (a task no plugin provides) records are compared as written
    assert leaderboard.render([old, new], "iris").count("\n## ") == 2


def test_effects_measured_in_float32_and_float64_are_never_one_section() -> None:
    """A record whose test losses were evaluated in float32 (the problem's precision, before the ground truth evaluated
    them in float64) and a newer one in float64 are two ground truths: two sections, each saying its precision; an
    older float64 problem's record (no field, float64 in its cache key) shares its section with a new one."""
    task_defaults, estimator_defaults = _defaults()
    old = json.loads(IRIS_CG_TOP.read_text())
    assert records.test_loss_dtype(old["ground_truth"]) == "float64"  # Iris is a float64 problem
    new = copy.deepcopy(old)
    new["run_id"], new["date"] = "20991231T000000Z-aaaaaa", "2099-12-31T00:00:00+00:00"
    new["ground_truth"]["test_loss_dtype"] = "float64"
    assert leaderboard.render([old, new], "iris", task_defaults, (), estimator_defaults).count("\n## ") == 1

    old["ground_truth"]["cache_key"]["dtype"] = "torch.float32"  # as the vision tasks' records before the field
    assert records.test_loss_dtype(old["ground_truth"]) == "float32"
    text = leaderboard.render([old, new], "iris", task_defaults, (), estimator_defaults)
    assert text.count("\n## ") == 2
    assert "test losses in float32" in text and "test losses in float64" in text
