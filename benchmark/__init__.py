"""influence-bench: how well do influence-function estimators predict leave-one-out re-training?

A plugin imports what it needs from here: :data:`hookimpl` to mark its hooks; for an estimator the contract
:class:`Estimator` (with :class:`EstimatorFailed` for an answer it cannot trust and :class:`EstimatorSkipped` for a
problem it does not apply to); for a task the contract :class:`Task`, the :class:`Problem` it builds, the
:class:`BuildContext` it is given, the :class:`Protocol` and :class:`Recipe` (and :class:`Polish`) it states, the
:class:`ReferenceRow` of a paper setting, the :class:`StreamedBatches` protocol for a problem whose training data
is streamed from disk, the optional speed-ups declared on :class:`Task` (:meth:`Task.descend`,
:meth:`Task.train_many`), and the range checks :func:`positive` and :func:`non_negative` for its config dataclass (a
``ValueError`` there is a one-line usage error); :class:`DataError` for missing or malformed data and
:class:`UsageError` for a bad option, each reported as one line.

The harness, by stage (each package imports only the ones listed before it):

- :mod:`benchmark.common`: errors, configuration, the on-disk cache, provenance;
- :mod:`benchmark.numerics`: the :class:`Problem` a task builds and the maths on it (training, curvature);
- :mod:`benchmark.contracts`: what plugins implement and receive (task, estimator, hooks, run config, records);
- :mod:`benchmark.groundtruth`: leave-one-out re-training, cached, in this process or on workers;
- :mod:`benchmark.evaluation`: ``bench run`` (estimators, selections, scores, records) and the leaderboards;
- :mod:`benchmark.studies`: declared sweeps, their tables, claims and figures, and the report;
- :mod:`benchmark.cli`: the ``bench`` command line.

:mod:`benchmark.peers` (speed against other libraries) stands apart: nothing of the harness imports it.
"""

from __future__ import annotations

from benchmark.common.config import non_negative, positive
from benchmark.common.errors import BenchError, DataError, EstimatorFailed, EstimatorSkipped, UsageError
from benchmark.common.provenance import VERSION as __version__
from benchmark.contracts.estimator import Estimator, NoConfig, ScopedEstimator
from benchmark.contracts.hookspecs import hookimpl, hookspec
from benchmark.contracts.task import BuildContext, Protocol, ReferenceRow, Task
from benchmark.numerics.problem import LAYERS, Network, Problem
from benchmark.numerics.recipes import Polish, Recipe
from benchmark.numerics.training import StreamedBatches

__all__ = [
    "LAYERS",
    "BenchError",
    "BuildContext",
    "DataError",
    "Estimator",
    "EstimatorFailed",
    "EstimatorSkipped",
    "Network",
    "NoConfig",
    "Polish",
    "Problem",
    "Protocol",
    "Recipe",
    "ReferenceRow",
    "ScopedEstimator",
    "StreamedBatches",
    "Task",
    "UsageError",
    "hookimpl",
    "hookspec",
    "non_negative",
    "positive",
    "__version__",
]
