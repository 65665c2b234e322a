"""The harness's error hierarchy.

Every error a user can cause derives from :class:`BenchError`; the CLI prints its message on one line and exits
with :attr:`BenchError.exit_code`, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 1


class UsageError(BenchError):
    """A bad command line, configuration value or file."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A name (task, estimator, option, device) that is not among the choices."""

    def __init__(self, kind: str, name: object, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        close = difflib.get_close_matches(str(name), self.choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown {kind} {name!r} (choices: {', '.join(self.choices) or 'none'}){hint}")


class PluginError(BenchError):
    """A plugin that cannot be imported, registered or used."""


class DataError(BenchError):
    """Input data that is missing or malformed."""


class CacheError(BenchError):
    """A cache entry that does not match the request it is loaded for."""


class EstimatorFailed(Exception):
    """Raised by an estimator that cannot produce a trustworthy answer (divergence, singular system).

    The harness records the run as failed with :attr:`reason`; it never takes the whole run down.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
