"""influence-bench: how well do influence-function estimators predict leave-one-out re-training?

A plugin imports only what it needs from here: :data:`hookimpl` to mark its hooks, and the contracts
:class:`Problem`, :class:`Estimator` and :class:`Task`.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("bench")
hookspec = pluggy.HookspecMarker("bench")

from benchmark.errors import EstimatorFailed  # noqa: E402
from benchmark.estimator import Estimator  # noqa: E402
from benchmark.problem import Problem  # noqa: E402
from benchmark.task import Recipe, Task  # noqa: E402

__all__ = ["Estimator", "EstimatorFailed", "Problem", "Recipe", "Task", "hookimpl", "hookspec", "__version__"]
