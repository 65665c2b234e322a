"""``bench site``: write the static website (:mod:`benchmark.site`) from result records, study results and asv's
results; by default the user's, into the results home; ``--publish`` the checkout's committed ones, into ``site/``
of the checkout (ignored by git: the site is generated, never committed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pluggy

from benchmark.common.errors import UsageError
from benchmark.common.paths import default_results_dir, published_dir, results_home, writable_directory
from benchmark.contracts.plugins import Registry
from benchmark.evaluation.timing import DEFAULT_RESULTS_DIR
from benchmark.site.build import Sources, build

HELP = "a static website of every leaderboard, study and timing (docs/site.md)"
ASV_DIR = "asv"
"""The committed asv results, under the published leaderboards: ``leaderboards/asv/<machine>/``."""
ASV_HTML = Path(".asv") / "html"
"""Where ``asv publish`` writes asv's own site (``html_dir`` of ``asv.conf.json``)."""
SITE_DIR = "site"
"""Where ``--publish`` writes the site by default: ``site/`` of the checkout."""


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench site`` (HOME: the user's results home, see :func:`results_home`)."""
    parser.add_argument("--output", type=Path, help="the site's directory (default HOME/site; with --publish site/)")
    parser.add_argument(
        "--results-dir", type=Path, help="result records (default $BENCH_RESULTS_DIR, else HOME/results)"
    )
    parser.add_argument("--studies-dir", type=Path, help="study CSV files and figures (default HOME/studies)")
    parser.add_argument("--asv-dir", type=Path, help=f"asv's results directory (default {DEFAULT_RESULTS_DIR})")
    parser.add_argument(
        "--asv-html",
        type=Path,
        help=f"asv's own published site (`asv publish`), copied under asv/ and linked (default {ASV_HTML} if it "
        "has an index.html)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="the site of the checkout's committed results: leaderboards/results, leaderboards/studies and "
        "leaderboards/asv, written into site/ of the checkout unless --output says otherwise",
    )


def sources(args: argparse.Namespace) -> Sources:
    """Where ``bench site`` reads from (see :func:`add_arguments`)."""
    if args.publish:
        for name in ("results_dir", "studies_dir", "asv_dir"):
            if getattr(args, name) is not None:
                raise UsageError(
                    f"--publish reads {published_dir()}; it cannot be combined with "
                    f"--{name.replace('_', '-')} {getattr(args, name)}"
                )
        home = published_dir()
        return Sources(home / "results", home / "studies", home / ASV_DIR, _asv_html(args))
    return Sources(
        args.results_dir or default_results_dir(),
        args.studies_dir or results_home() / "studies",
        args.asv_dir or DEFAULT_RESULTS_DIR,
        _asv_html(args),
    )


def _asv_html(args: argparse.Namespace) -> Path | None:
    """``--asv-html``, which must hold asv's site; else asv's default ``html_dir`` where ``asv publish`` wrote one."""
    if args.asv_html is not None:
        if not (args.asv_html / "index.html").is_file():
            raise UsageError(f"--asv-html {args.asv_html}: no index.html there (run `asv publish` first)")
        return Path(args.asv_html)
    return ASV_HTML if (ASV_HTML / "index.html").is_file() else None


def output_dir(args: argparse.Namespace) -> Path:
    """Where the site goes: ``--output``, else ``site/`` of the checkout with ``--publish``, else HOME/site."""
    if args.output is not None:
        return Path(args.output).expanduser()
    return published_dir().parent / SITE_DIR if args.publish else results_home() / SITE_DIR


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench site``: write the site and print where its home page is."""
    where = sources(args)
    if not where.results.is_dir():
        raise UsageError(f"no results directory {str(where.results)!r}: run `bench run` first or pass --results-dir")
    output = output_dir(args)
    if not writable_directory(output, "site directory"):
        raise UsageError(f"site directory {output} is not writable: pass --output DIR")
    summary = build(output, where, registry, pm)
    print(
        f"site: {output / 'index.html'} ({len(summary['pages'])} pages: {len(summary['tasks'])} tasks, "
        f"{summary['rows']} leaderboard rows, {summary['claims']} claims, {summary['asv_commits']} asv commits)"
    )
    print(f"view it: open {output / 'index.html'}, or python -m http.server -d {output}")
    return 0
