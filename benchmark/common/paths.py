"""Where results go: a user's results directory, a source checkout's committed leaderboards, and whether a directory
can be written there.

``bench run`` writes its records to ``--results-dir``, else ``$BENCH_RESULTS_DIR`` (:data:`RESULTS_ENV`), else
``$XDG_DATA_HOME/bench/results`` (``~/.local/share/bench/results``), and its leaderboard beside that directory; the
studies and the report go beside it too (:func:`results_home`). Nothing goes into the source tree unless told:
``--publish`` writes the checkout's committed leaderboards (:data:`PUBLISHED_DIR`).
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmark.common.errors import UsageError
from benchmark.common.provenance import REPO

RESULTS_ENV = "BENCH_RESULTS_DIR"
"""The environment variable that names the default results directory."""
PUBLISHED_DIR = REPO / "leaderboards"
"""The committed leaderboards of a source checkout (``--publish``): ``<task>.md``, ``results/``, ``studies/``, the
claims table ``README.md``."""


def default_results_dir() -> Path:
    """Where ``bench run`` writes its records unless told otherwise, outside any source tree: ``$BENCH_RESULTS_DIR``,
    else ``$XDG_DATA_HOME/bench/results``, else ``~/.local/share/bench/results`` (the leaderboard goes beside it)."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "bench" / "results"


def results_home() -> Path:
    """Where a user's leaderboards, studies and report go by default: the parent of :func:`default_results_dir`."""
    return default_results_dir().parent


def published_dir() -> Path:
    """:data:`PUBLISHED_DIR`; :class:`UsageError` where the package runs from no source checkout."""
    if not PUBLISHED_DIR.is_dir():
        raise UsageError(
            f"--publish writes a source checkout's committed leaderboards, and there are none at "
            f"{PUBLISHED_DIR}: name the directories instead"
        )
    return PUBLISHED_DIR


def writable_directory(path: Path, what: str) -> bool:
    """Whether ``path`` (or, where it does not exist yet, its nearest existing ancestor) is a writable directory.

    Raises:
        UsageError: ``path`` or an ancestor is not a directory (a file, say).
    """
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        below = "" if probe == path else f" ({probe} is a file)"
        raise UsageError(f"{what} {path} is not a directory{below}")
    return os.access(probe, os.W_OK | os.X_OK)
