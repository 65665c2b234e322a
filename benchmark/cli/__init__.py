"""The ``bench`` command line: ``list``, ``run``, ``gt``, ``leaderboard``, ``study``, ``report`` and ``timing``.

:mod:`~benchmark.cli.bench` parses the command line and dispatches; each command is one module of this package
(``bench gt`` is :mod:`~benchmark.cli.gt`, ``bench list`` :mod:`~benchmark.cli.listing`, and so on), with its
options and its body; :mod:`~benchmark.cli.shared` holds what several commands share.

Exit status: 0 on success; 2 for a user's mistake (one line on stderr, ``bench: error: ...``, before any work);
1 for a failure found while working: a plugin's fault outside the scored steps (one line naming plugin and hook), an
unwritable cache or results directory, and a ``bench run`` in which **no estimator produced a score** (every record
failed or was skipped, an estimator that does not apply to the problem counting as no score: the records are still
written) or a reporting hook failed (every record is still written); 130 when interrupted. A run in which some
estimators fail or are skipped and at least one scores exits 0: the failures and skips are results.

Where results go: ``bench run`` writes its records to ``--results-dir``, else ``$BENCH_RESULTS_DIR``, else
``$XDG_DATA_HOME/bench/results`` (``~/.local/share/bench/results``), and its leaderboard beside that directory, never
into the source tree unless told: ``--publish`` writes the repository's committed ``leaderboards/results`` and
``leaderboards/<task>.md`` (``bench leaderboard --publish`` re-renders them).
"""

from benchmark.cli.bench import main

__all__ = ["main"]
