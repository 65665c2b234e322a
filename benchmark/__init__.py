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
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("bench")
hookspec = pluggy.HookspecMarker("bench")

from benchmark.config import non_negative, positive  # noqa: E402
from benchmark.errors import BenchError, DataError, EstimatorFailed, EstimatorSkipped, UsageError  # noqa: E402
from benchmark.estimator import Estimator, NoConfig  # noqa: E402
from benchmark.problem import Problem  # noqa: E402
from benchmark.recipes import Polish, Recipe  # noqa: E402
from benchmark.task import BuildContext, Protocol, ReferenceRow, Task  # noqa: E402
from benchmark.training import StreamedBatches  # noqa: E402

__all__ = [
    "BenchError",
    "BuildContext",
    "DataError",
    "Estimator",
    "EstimatorFailed",
    "EstimatorSkipped",
    "NoConfig",
    "Polish",
    "Problem",
    "Protocol",
    "Recipe",
    "ReferenceRow",
    "StreamedBatches",
    "Task",
    "UsageError",
    "hookimpl",
    "hookspec",
    "non_negative",
    "positive",
    "__version__",
]
