"""``bench timing``: print (and with ``--output`` write) the paper's Table 2 from one asv result file
(:mod:`benchmark.evaluation.timing`), with the command that regenerates it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pluggy

from benchmark.common import provenance
from benchmark.contracts.plugins import Registry
from benchmark.evaluation.asv_results import load
from benchmark.evaluation.timing import DEFAULT_RESULTS_DIR, render, write

HELP = "the paper's Table 2 as Markdown from the asv suite's results (docs/timing.md)"


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench timing``."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"asv's results directory (default {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument("--machine", help="asv machine name (default: the only one)")
    parser.add_argument("--commit", help="commit hash or prefix (default: the only one, else the checked-out commit)")
    parser.add_argument("--env", help="asv environment name (default: the commit's only one)")
    parser.add_argument("--output", type=Path, help="also write the Markdown here, e.g. leaderboards/timing.md")


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench timing``: print (and with ``--output`` write) Table 2 from one asv result file."""
    head, _ = provenance.git_commit()
    results = load(args.results_dir, args.machine, args.commit, args.env, head)
    words = ["bench", "timing", "--commit", results.commit[:8]]
    if Path(args.results_dir) != DEFAULT_RESULTS_DIR:
        words += ["--results-dir", str(args.results_dir)]
    for option, value in (("--machine", args.machine), ("--env", args.env), ("--output", args.output)):
        if value is not None:
            words += [option, str(value)]
    text = render(results, shlex.join(words))
    if args.output is not None:
        write(text, args.output)
    print(text)
    return 0
