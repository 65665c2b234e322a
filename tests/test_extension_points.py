"""Every extension point is declared: the optional task speed-ups on :class:`benchmark.Task`, the streamed-batches
protocol exported from ``benchmark``, and studies found through the ``bench_studies`` hook."""

from __future__ import annotations

import inspect

import pytest

import benchmark
from benchmark import StreamedBatches, Task
from benchmark.contracts.plugins import plugin_manager
from benchmark.numerics.training import descend
from benchmark.studies.declaration import declared_studies
from examples.logistic_task import Logistic
from tasks.imagenet_problem import StreamedProblem
from tasks.iris import Iris


@pytest.mark.parametrize("method", ["descend", "train_many"])
def test_optional_task_methods_are_declared_and_documented(method: str) -> None:
    declared = getattr(Task, method)
    assert inspect.getdoc(declared) and "Optional" in inspect.getdoc(declared)
    assert Iris.overrides(method)  # Iris has both speed-ups
    assert not Logistic.overrides(method)  # a plain task has neither: the harness keeps its own path


def test_default_speed_ups_are_the_harness_own() -> None:
    assert Logistic.train_many([], [], None) is None  # nothing trained: each run's build trains its own optimum
    assert "training.descend" in inspect.getsource(Task.descend) and "descend" in descend.__name__
    with pytest.raises(AttributeError):
        Iris.overrides("no_such_method")


def test_streamed_batches_protocol_is_exported_and_documented() -> None:
    assert "StreamedBatches" in benchmark.__all__ and benchmark.StreamedBatches is StreamedBatches
    assert inspect.getdoc(StreamedBatches) and inspect.getdoc(StreamedBatches.load_batches)
    assert hasattr(StreamedProblem, "load_batches")  # the ImageNet problem is one, structurally
    assert not issubclass(benchmark.Problem, StreamedBatches)


def test_built_in_studies_come_from_the_task_plugins() -> None:
    studies = declared_studies(plugin_manager())
    assert {studies[name].plugin for name in ("iris-depth", "iris-width", "iris-lissa")} == {"iris"}
    assert {studies[name].plugin for name in ("mnist-test-points", "mnist-weight-decay")} == {"vision"}
    assert all(declared.path.is_file() for declared in studies.values())
    blocked = declared_studies(plugin_manager(["no:vision"]))
    assert "iris-depth" in blocked and "mnist-test-points" not in blocked
