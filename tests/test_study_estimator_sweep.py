"""``estimator_sweep``: studies that sweep an estimator's hyperparameters (TracIn's checkpoints) beside or instead of
task options. Declarations and their one-line errors, the variants of one run, the tables' columns, the reference
lines of the figures, the cache and resuming after an interruption; every run is a tiny Iris one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.common import config as configuration
from benchmark.common.errors import Interrupted, UsageError
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.run_config import RunConfig
from benchmark.evaluation.estimation import variant_label
from benchmark.evaluation.runner import Run
from benchmark.studies import run as study_run
from benchmark.studies.declaration import parse_study
from benchmark.studies.figures import _references
from benchmark.studies.tables import estimator_fields
from tests.conftest import assert_one_line_error

SWEEP_STUDY = """\
name: {name}
title: Tiny checkpoints sweep
task: iris
base: {{width: 4, train_steps: 400, retrain_steps: 60}}
seeds: [0]
estimators: [tracin, first-order]
estimator_sweep:
  tracin: {{checkpoints: [1, 3]}}
selections: [top]
run: {{gt_chunk_size: 64}}
panels:
  - name: spearman
    title: Spearman against checkpoints
    x: checkpoints
    y: spearman
    series: [estimator]
    where: {{selection: top}}
    claims:
      - {{id: defined, section: test, figure: test, text: every setting scores, paper: defined,
          rule: {{kind: fraction, y: spearman, op: ">", threshold: -2, where: {{checkpoints: [1, 3]}}}}}}
  - name: points
    kind: scatter
    title: estimated against re-trained
    x: estimated
    y: retrained
    series: [checkpoints]
    where: {{estimator: tracin}}
"""


def write_study(directory: Path, name: str = "ck", text: str | None = None) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text if text is not None else SWEEP_STUDY.format(name=name))
    return path


def parsed(text: str, name: str = "ck") -> object:
    return parse_study(Path(f"{name}.yaml"), configuration.safe_load(text))


def png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- declarations ---------------------------------------------------------------------------------------------------
def test_estimator_sweep_is_parsed_in_order() -> None:
    text = SWEEP_STUDY.format(name="ck").replace(
        "estimators: [tracin, first-order]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}",
        "estimators: [tracin, lissa]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}\n"
        "  lissa: {repeats: [1, 2], depth: [10, 20, 30]}",
    )
    study = parsed(text)
    assert study.sweep == {} and len(study.points()) == 1  # no task option swept: one point, the base
    assert study.estimator_sweep == {
        "tracin": {"checkpoints": [1, 3]},
        "lissa": {"repeats": [1, 2], "depth": [10, 20, 30]},
    }
    assert study.estimator_columns == ["checkpoints", "repeats", "depth"]
    variants = study.variants()
    assert variants["tracin"] == [{"checkpoints": 1}, {"checkpoints": 3}]
    assert len(variants["lissa"]) == 6
    assert variants["lissa"][:4] == [
        {"repeats": 1, "depth": 10},
        {"repeats": 1, "depth": 20},
        {"repeats": 1, "depth": 30},
        {"repeats": 2, "depth": 10},
    ]
    assert study.variants(["lissa"]).keys() == {"lissa"}
    # beside a task sweep
    both = parsed(SWEEP_STUDY.format(name="ck").replace("seeds: [0]", "sweep: {depth: [1, 2]}\nseeds: [0]"))
    assert [p["depth"] for p in both.points()] == [1, 2] and both.estimator_sweep


def test_variant_labels() -> None:
    assert variant_label("tracin", {}) == "tracin"
    assert variant_label("tracin", {"checkpoints": 5}) == "tracin[checkpoints=5]"
    assert variant_label("lissa", {"repeats": 1, "damping": 0.01}) == "lissa[repeats=1,damping=0.01]"
    sweep = {"tracin": {"checkpoints": [1, 5]}, "trak": {"models": [2]}}
    labelled = {"estimator": {"name": "tracin[checkpoints=5]", "hyperparameters": {"checkpoints": 5}}}
    assert estimator_fields(labelled, sweep) == ("tracin", {"checkpoints": 5, "models": None})
    plain = {"estimator": {"name": "first-order", "hyperparameters": {"scale": 1.0}}}
    assert estimator_fields(plain, sweep) == ("first-order", {"checkpoints": None, "models": None})
    # a `bench run` record of a swept estimator (claims decided on records): its own value
    run = {"estimator": {"name": "tracin", "hyperparameters": {"checkpoints": 5}}}
    assert estimator_fields(run, sweep) == ("tracin", {"checkpoints": 5, "models": None})
    assert estimator_fields(plain, None) == ("first-order", {})


def _bad(replace: str, by: str) -> str:
    text = SWEEP_STUDY.format(name="bad")
    assert replace in text, replace
    return text.replace(replace, by)


MALFORMED = {
    "not-in-estimators": (
        _bad("  tracin: {checkpoints: [1, 3]}", "  tracin: {checkpoints: [1, 3]}\n  lissa: {depth: [1]}"),
        ["bad.yaml", "'estimator_sweep.lissa'", "not in 'estimators'"],
    ),
    "unknown-field": (
        _bad("{checkpoints: [1, 3]}", "{checkpoint: [1, 3]}"),
        ["bad.yaml", "'estimator_sweep.tracin.checkpoint'", "choices: checkpoints", "did you mean 'checkpoints'?"],
    ),
    "empty-list": (
        _bad("{checkpoints: [1, 3]}", "{checkpoints: []}"),
        ["bad.yaml", "'estimator_sweep.tracin.checkpoints'", "non-empty list"],
    ),
    "not-a-list": (
        _bad("{checkpoints: [1, 3]}", "{checkpoints: 3}"),
        ["bad.yaml", "'estimator_sweep.tracin.checkpoints'", "non-empty list"],
    ),
    "no-fields": (_bad("{checkpoints: [1, 3]}", "{}"), ["bad.yaml", "'estimator_sweep.tracin'", "mapping"]),
    "not-a-mapping": (_bad("  tracin: {checkpoints: [1, 3]}", "  - tracin"), ["bad.yaml", "'estimator_sweep'"]),
    "twice": (
        _bad("{checkpoints: [1, 3]}", "{checkpoints: [1, 3, 1]}"),
        ["bad.yaml", "'estimator_sweep.tracin.checkpoints'", "listed twice"],
    ),
    "also-fixed": (
        _bad("estimator_sweep:", "estimator_options: {tracin: {checkpoints: 4}}\nestimator_sweep:"),
        ["bad.yaml", "'estimator_sweep.tracin.checkpoints'", "also fixed in 'estimator_options.tracin'"],
    ),
    "task-sweep-clash": (
        _bad(
            "seeds: [0]\nestimators: [tracin, first-order]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}",
            "sweep: {depth: [1, 2]}\nseeds: [0]\nestimators: [lissa]\nestimator_sweep:\n  lissa: {depth: [5, 10]}",
        ),
        ["bad.yaml", "'estimator_sweep.lissa.depth'", "swept task option"],
    ),
    "table-column-clash": (
        _bad(
            "estimators: [tracin, first-order]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}",
            "estimators: [tracin, cg]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}\n  cg: {seed: [0, 1]}",
        ),
        ["bad.yaml", "'estimator_sweep.cg.seed'", "already a column"],
    ),
    "task-option-clash": (
        _bad(
            "estimators: [tracin, first-order]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}",
            "estimators: [tracin, lissa]\nestimator_sweep:\n  tracin: {checkpoints: [1, 3]}\n  lissa: {depth: [5, 10]}",
        ),
        ["bad.yaml", "'estimator_sweep.lissa.depth'", "already a column"],
    ),
    "bad-value": (
        _bad("{checkpoints: [1, 3]}", "{checkpoints: [0, 3]}"),
        ["bad.yaml", "'estimator_sweep.tracin'", "checkpoints must be > 0"],
    ),
    "nothing-swept": (
        _bad("estimator_sweep:\n  tracin: {checkpoints: [1, 3]}\n", ""),
        ["bad.yaml", "'sweep'", "missing"],
    ),
    "panel-column": (
        _bad("x: checkpoints", "x: checkpoint"),
        ["bad.yaml", "'panels[0].x'", "'checkpoint'"],
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_estimator_sweep_is_one_line_naming_file_and_field(case: str, bench, tmp_path: Path) -> None:
    text, fragments = MALFORMED[case]
    path = write_study(tmp_path, "bad", text)
    result = bench("study", path, "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "c", "--no-progress")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "c" / "optima").exists()  # refused before anything was trained


def test_a_swept_field_cannot_be_set(bench, tmp_path: Path) -> None:
    path = write_study(tmp_path)
    result = bench("study", path, "--set", "tracin.checkpoints=2", "--output-dir", tmp_path / "out", "--no-progress")
    assert_one_line_error(result, "--set tracin.checkpoints", "swept by study 'ck'")


def test_a_run_refuses_settings_of_an_estimator_it_does_not_run(tmp_path: Path) -> None:
    registry = Registry(plugin_manager())
    config = RunConfig(task="iris", estimators=["tracin"], cache_dir=tmp_path, results_dir=tmp_path / "r")
    with pytest.raises(UsageError, match="'first-order', which is not in this run"):
        Run(config, registry, plugin_manager(), {"first-order": [{"scale": 2.0}]})
    with pytest.raises(UsageError, match=r"'tracin\[checkpoints=2\]' is evaluated twice"):
        Run(config, registry, plugin_manager(), {"tracin": [{"checkpoints": 2}, {"checkpoints": 2}]})
    run = Run(config, registry, plugin_manager(), {"tracin": [{"checkpoints": 1}, {"checkpoints": 4}]})
    assert [e.label for e in run.estimators] == ["tracin[checkpoints=1]", "tracin[checkpoints=4]"]
    assert [e.estimator.config.checkpoints for e in run.estimators] == [1, 4]


# -- figures --------------------------------------------------------------------------------------------------------
def test_unswept_series_are_references_of_a_panel_against_a_swept_field() -> None:
    study = parsed(SWEEP_STUDY.format(name="ck"))
    frame = pd.DataFrame(
        {
            "estimator": ["tracin", "tracin", "first-order", "first-order"],
            "checkpoints": [1.0, 3.0, np.nan, np.nan],
            "spearman": [0.2, 0.4, 0.5, np.nan],
            "selection": "top",
            "status": "ok",
        }
    )
    references = _references(study, study.panels[0], frame)
    assert list(references.index) == [2]  # first-order, with a value of y
    # a panel against a task option or without series that tell the estimators apart draws none
    assert _references(study, study.panels[1], frame).empty


# -- end to end -----------------------------------------------------------------------------------------------------
def test_checkpoints_sweep_end_to_end_and_cached(bench, tmp_path: Path) -> None:
    path = write_study(tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = bench("study", path, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert result.code == 0, result.err
    assert "study ck: run 1/1: seed 0 (tracin: 2 settings)" in result.err
    assert "estimator tracin[checkpoints=1]" in result.err and "estimator tracin[checkpoints=3]" in result.err
    # one problem and one ground truth for every setting
    assert result.err.count("building task iris") == 1 and result.err.count("bench: ground truth: ") == 1
    rows = pd.read_csv(out / "ck.csv")
    assert sorted(rows["estimator"]) == ["first-order", "tracin", "tracin"] and (rows["status"] == "ok").all()
    tracin = rows[rows["estimator"] == "tracin"].set_index("checkpoints")
    assert sorted(tracin.index) == [1, 3]
    assert tracin.loc[1, "spearman"] != tracin.loc[3, "spearman"]
    assert [json.loads(h)["checkpoints"] for h in tracin["estimator_hyperparameters"]] == list(tracin.index)
    assert [len(json.loads(d)["steps"]) for d in tracin["estimator_diagnostics"]] == list(tracin.index)
    assert rows[rows["estimator"] == "first-order"]["checkpoints"].isna().all()
    assert rows["run_id"].nunique() == 1 and rows["drift_to_effect"].nunique() == 1
    points = pd.read_csv(out / "ck-points.csv")
    assert set(points[points["estimator"] == "tracin"]["checkpoints"]) == {1, 3}
    for panel in ("spearman", "points"):
        assert png(out / f"ck-{panel}.png")
    assert "test: every setting scores: agrees" in result.out
    records = sorted(p.name for p in (cache / "study-records" / "ck" / "iris").glob("*.json"))
    assert [name.split("-", 2)[2] for name in records] == [
        "first-order-top.json",
        "tracin[checkpoints=1]-top.json",
        "tracin[checkpoints=3]-top.json",
    ]

    table = (out / "ck.csv").read_text()
    again = bench("study", path, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert again.code == 0 and "its records are cached" in again.err
    assert (out / "ck.csv").read_text() == table

    # another setting: a new run (its key holds the settings), the same scores for the settings it had
    more = write_study(tmp_path, text=SWEEP_STUDY.format(name="ck").replace("[1, 3]", "[1, 3, 6]"))
    grown = bench("study", more, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert grown.code == 0, grown.err
    assert "its records are cached" not in grown.err and "0 optima trained" in grown.err
    wider = pd.read_csv(out / "ck.csv")
    wide_tracin = wider[wider["estimator"] == "tracin"].set_index("checkpoints")
    assert sorted(wide_tracin.index) == [1, 3, 6]
    for count in (1, 3):
        assert wide_tracin.loc[count, "spearman"] == pytest.approx(tracin.loc[count, "spearman"], abs=1e-12)

    # the estimator list of the command line drops the sweep of an estimator it leaves out
    alone = bench(
        "study", path, "--estimator", "first-order", "--output-dir", out, "--cache-dir", cache, "--no-progress"
    )
    assert alone.code == 0, alone.err
    assert list(pd.read_csv(out / "ck.csv")["estimator"]) == ["first-order"]


def test_an_interrupted_sweep_resumes_where_it_stopped(bench, tmp_path: Path, monkeypatch) -> None:
    """Two points (weight decay 0.001, 0) x two TracIn settings: interrupted in the second run, the rerun takes the
    first run's records from the cache and does only the second."""
    path = write_study(
        tmp_path,
        text=SWEEP_STUDY.format(name="ck").replace("seeds: [0]", "sweep: {weight_decay: [0.001, 0.0]}\nseeds: [0]"),
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    execute = study_run.StudyRun.execute
    calls = []

    def interrupted(self):
        calls.append(self.config.task_options["weight_decay"])
        if len(calls) == 2:
            raise Interrupted()
        return execute(self)

    monkeypatch.setattr(study_run.StudyRun, "execute", interrupted)
    stopped = bench("study", path, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert stopped.code == 130 and "interrupted" in stopped.err and not (out / "ck.csv").exists()
    monkeypatch.setattr(study_run.StudyRun, "execute", execute)
    resumed = bench("study", path, "--output-dir", out, "--cache-dir", cache, "--no-progress")
    assert resumed.code == 0, resumed.err
    assert resumed.err.count("its records are cached") == 1 and "run 1/2: its records are cached" in resumed.err
    rows = pd.read_csv(out / "ck.csv")
    assert len(rows) == 2 * 3
    assert set(zip(rows["weight_decay"], rows["checkpoints"].fillna(0))) == {
        (w, c) for w in (0.001, 0.0) for c in (1, 3, 0)
    }
