"""The asv suite pays torch's one-off start-up in ``setup``, as ``bench run`` does, never in a timed call."""

from __future__ import annotations

import json

import pytest

from asv_bench import cases
from benchmark.numerics.problem import Problem

TINY_IRIS = {"train_steps": 300, "retrain_steps": 50}


@pytest.fixture
def artefacts(tmp_path, monkeypatch):
    for name in (
        cases.LARGE_ENV,
        cases.CASES_ENV,
        cases.PLUGINS_ENV,
        cases.DEVICE_ENV,
        cases.THREADS_ENV,
        cases.CACHE_ENV,
        cases.DATA_ENV,
        cases.TIMER_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cases, "task_options", lambda case, size: dict(TINY_IRIS))
    _, _, _, test_index = cases.build("iris", "small", tmp_path / "cache")
    ok = {"status": "ok", "reason": None, "spearman": None, "residual": None}
    path = tmp_path / "artefacts.json"
    path.write_text(
        json.dumps(
            {
                "cache_dir": str(tmp_path / "cache"),
                "cases": {
                    "iris|small": {
                        "n_train": 120,
                        "n_params": 43,
                        "test_index": test_index,
                        "threads": 1,
                        "estimators": {"first-order": ok, "exact": ok},
                    }
                },
            }
        )
    )
    return str(path)


def _record_start_up(monkeypatch) -> list[str]:
    calls: list[str] = []
    real_gradients, real_warm_up = Problem._example_gradients, Problem.warm_up

    def example_gradients(self, *args, **kwargs):
        calls.append("per-example gradients")
        return real_gradients(self, *args, **kwargs)

    def warm_up(self):
        calls.append("warm_up")
        return real_warm_up(self)

    monkeypatch.setattr(Problem, "_example_gradients", example_gradients)
    monkeypatch.setattr(Problem, "warm_up", warm_up)
    return calls


def test_setup_of_a_timed_preparation_warms_up(artefacts, monkeypatch):
    calls = _record_start_up(monkeypatch)
    prepared = cases.unprepared(artefacts, "iris", "exact", "small")
    assert prepared.estimator.problem is None  # nothing prepared: time_prepare times that
    assert "per-example gradients" in calls and "warm_up" in calls


def test_setup_of_a_timed_query_warms_up_before_preparing(artefacts, monkeypatch):
    from benchmark.contracts.estimator import Estimator

    calls = _record_start_up(monkeypatch)
    real_prepare = Estimator.prepare

    def prepare(self, problem):
        calls.append("prepare")
        return real_prepare(self, problem)

    monkeypatch.setattr(Estimator, "prepare", prepare)
    cases.prepared(artefacts, "iris", "first-order", "small")
    assert "prepare" in calls
    before = calls[: calls.index("prepare")]
    assert "per-example gradients" in before and "warm_up" in before
