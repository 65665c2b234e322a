"""The ``bench`` program: the parser (the options every command shares, then one sub-command per module of
:mod:`benchmark.cli`, in :data:`COMMANDS`) and :func:`main`, which runs the command and turns every error into one
line and an exit status (see :mod:`benchmark.cli`)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

import pluggy

from benchmark.cli import gt, leaderboard, listing, report, run, site, study, timing
from benchmark.cli.shared import report_error
from benchmark.common.errors import BenchError, UsageError, user_interrupts
from benchmark.contracts.plugins import Registry, plugin_manager

COMMANDS = {
    "list": listing,
    "run": run,
    "gt": gt,
    "leaderboard": leaderboard,
    "study": study,
    "report": report,
    "timing": timing,
    "site": site,
}
"""Each command's module: its ``HELP``, ``add_arguments(parser, pm)`` and ``command(args, registry, pm)``, which
returns the exit status."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _plugin_args(argv: Sequence[str]) -> list[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-p", action="append", default=[])
    known, _ = pre.parse_known_args(list(argv))
    return known.p


def build_parser(pm: pluggy.PluginManager) -> Parser:
    """The full parser, plugin options included."""
    common = Parser(add_help=False)
    common.add_argument(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="load a plugin module by import path; -p no:NAME disables plugin NAME",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of failures)")
    parser = Parser(
        prog="bench",
        description="Benchmark influence-function estimators against leave-one-out re-training.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True

    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, parents=[common], help=module.HELP), pm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bench`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torch's forward-mode AD scripts its decompositions on first use and warns about its own deprecated API
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    logging.basicConfig(format="bench: %(message)s", level=logging.INFO, stream=sys.stderr, force=True)
    verbose = any(arg in ("-v", "--verbose") for arg in argv)
    try:
        with user_interrupts():
            return _main(argv)
    except BenchError as error:
        report_error(error, verbose)
        return error.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted (finished ground-truth entries are cached; rerun to resume)", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    pm = plugin_manager(_plugin_args(argv))
    registry = Registry(pm)
    args = build_parser(pm).parse_args(argv)
    args.argv = argv
    if args.verbose:
        logging.getLogger("bench").setLevel(logging.DEBUG)
    return COMMANDS[args.command].command(args, registry, pm)
