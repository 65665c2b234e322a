"""``bench report``: write the HTML report and the claims table (:mod:`benchmark.studies.report`), by default in the
user's results home, with ``--publish`` the committed ``leaderboards/``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pluggy

from benchmark.common.errors import UsageError
from benchmark.common.paths import default_results_dir, published_dir, results_home
from benchmark.contracts.plugins import Registry
from benchmark.studies.report import LEADERBOARDS_DIR, STUDIES_DIR, render

HELP = "one HTML page of leaderboards, timings, study figures and claims; the claims table in leaderboards/README.md"


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench report`` (defaults: the user's results home HOME, see :mod:`benchmark.studies.report`)."""
    parser.add_argument("--output", type=Path, help="the HTML page (default HOME/report.html)")
    parser.add_argument("--readme", type=Path, help="the claims table (default HOME/README.md)")
    parser.add_argument("--leaderboards-dir", type=Path, help="where the leaderboards (*.md) are (default HOME)")
    parser.add_argument(
        "--studies-dir", type=Path, help="where the study CSV files and figures are (default HOME/studies)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="result records, for studies without a CSV (default $BENCH_RESULTS_DIR, else HOME/results)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"read and write the repository's committed "
        f"{LEADERBOARDS_DIR}/ ({STUDIES_DIR / 'report.html'}, {LEADERBOARDS_DIR / 'README.md'})",
    )


def _locations(args: argparse.Namespace) -> None:
    """Fill in the defaults of ``bench report``'s paths (see :func:`add_arguments`)."""
    names = ("output", "readme", "leaderboards_dir", "studies_dir", "results_dir")
    if args.publish:
        for name in names:
            if getattr(args, name) is not None:
                raise UsageError(
                    f"--publish reads and writes {published_dir()}; it cannot be combined with "
                    f"--{name.replace('_', '-')} {getattr(args, name)}"
                )
        home, results = published_dir(), published_dir() / "results"
        output = home / "studies" / "report.html"
    else:
        home, results = results_home(), default_results_dir()
        output = home / "report.html"
    defaults = {
        "output": output,
        "readme": home / "README.md",
        "leaderboards_dir": home,
        "studies_dir": home / "studies",
        "results_dir": results,
    }
    for name in names:
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench report`` (the studies of the plugins of ``pm``)."""
    _locations(args)
    page, readme = render(args.leaderboards_dir, args.studies_dir, args.results_dir, pm=pm)
    for path, text in ((args.output, page), (args.readme, readme)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0
