"""The harness's error hierarchy.

Every error a user can cause derives from :class:`BenchError`; the CLI prints its message on one line and exits
with :attr:`BenchError.exit_code`, without a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import signal
import threading
from collections.abc import Iterable, Iterator


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


class PluginHookError(PluginError):
    """An exception (``SystemExit`` and ``KeyboardInterrupt`` included) raised by a plugin's hook implementation.

    The CLI prints one line naming the plugin and the hook; with ``-v`` also the traceback of :attr:`error`.
    """

    def __init__(self, plugin: str, hook: str, error: BaseException, calls: int = 1):
        self.plugin, self.hook, self.error = plugin, hook, error
        times = f" ({calls} calls)" if calls > 1 else ""
        super().__init__(f'plugin "{plugin}" failed in hook {hook}{times}: {describe(error)}')


class Interrupted(KeyboardInterrupt):
    """The user's Ctrl-C (SIGINT) inside :func:`user_interrupts`, told apart from a ``KeyboardInterrupt`` that plugin
    code raised itself: the former stops the run, the latter is that plugin's failure like any other exception."""


PLUGIN_FAULTS = (Exception, SystemExit, KeyboardInterrupt)
"""What a plugin's code may raise and the harness turns into that plugin's failure (after re-raising
:class:`Interrupted`, the user's own Ctrl-C)."""


def describe(error: BaseException) -> str:
    """``"Type: message"`` of ``error``, saying so where plugin code called ``sys.exit``."""
    text = str(error)
    name = type(error).__name__
    if isinstance(error, SystemExit):
        return f"{name}: {text or None} (plugin code called sys.exit)"
    return f"{name}: {text}" if text else name


@contextlib.contextmanager
def user_interrupts() -> Iterator[None]:
    """Within the block, SIGINT raises :class:`Interrupted` (where this is the main thread and SIGINT has Python's
    default handler), so that the user's Ctrl-C still stops a run while plugin code's ``KeyboardInterrupt`` does not."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted()

    signal.signal(signal.SIGINT, handler)
    # A library that spawns processes may leave SIGINT blocked in this thread (its mask is inherited by the children
    # it starts), and a blocked Ctrl-C would wait until the run ended: unblocked for the block, the mask put back after.
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])


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


class EstimatorSkipped(EstimatorFailed):
    """Raised from :meth:`~benchmark.Estimator.prepare` by an estimator that does not apply to the problem (e.g.
    ``exact`` above its ``max_params``): not a fault of the estimator, a setting it is not made for.

    The harness records the run with status ``"skipped"`` and :attr:`reason` (the leaderboard shows "skipped:
    reason"); the run goes on. A run in which no estimator produced a score, every one skipped or failed, exits 1.
    A subclass of :class:`EstimatorFailed`, so that code catching an estimator's refusals (the asv suite's
    "declined") still catches it; the harness tells the two apart.
    """
