"""Every hook of the harness, in the order a run calls them.

A plugin is a module (or an object) with functions marked ``@benchmark.hookimpl`` and named like the specs below.
Built-in plugins, third-party plugins from the ``bench`` entry-point group and modules given with ``-p`` are all
registered the same way (see :mod:`benchmark.contracts.plugins`).

A hook implementation that raises (``SystemExit`` and ``KeyboardInterrupt`` included) fails the command with one line
naming its plugin and the hook (the traceback with ``-v``), except the reporting hooks: there every implementation is
still called, every record is still written, and the command then exits 1 naming the failed plugin and hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from benchmark.contracts.estimator import Estimator
    from benchmark.contracts.run_config import RunConfig
    from benchmark.contracts.task import Task

hookimpl = pluggy.HookimplMarker("bench")
"""Marks a plugin's hook implementations (importable as ``benchmark.hookimpl``)."""
hookspec = pluggy.HookspecMarker("bench")
"""Marks the specifications below (importable as ``benchmark.hookspec``)."""

# -------------------------------------------------------------------------------------------------------------------
# Initialisation: command line and configuration
# -------------------------------------------------------------------------------------------------------------------


@hookspec(historic=True)
def bench_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``bench run``.

    Called once per plugin, before the command line is parsed (historic: a plugin registered later is called too).

    Args:
        parser: the ``bench run`` argument parser; add options with ``parser.add_argument``. Their values reach
            :func:`bench_configure` as ``config.options``.
    """


@hookspec(historic=True)
def bench_configure(config: RunConfig) -> None:
    """Called once the run's configuration is resolved, before any work (historic).

    Args:
        config: the resolved run configuration; plugin options are in ``config.options``.
    """


# -------------------------------------------------------------------------------------------------------------------
# Registration: what the harness can run
# -------------------------------------------------------------------------------------------------------------------


@hookspec
def bench_estimators() -> list[type[Estimator]]:
    """Return the estimator classes this plugin provides.

    Called once when the registry is built; every plugin's list is collected. Each class needs a unique ``name``
    (the short name for ``--estimator`` and ``--set NAME.FIELD=VALUE``); a clash is an error naming both plugins.

    Returns:
        Subclasses of :class:`benchmark.Estimator`.
    """


@hookspec
def bench_tasks() -> list[type[Task]]:
    """Return the task classes this plugin provides.

    Called once when the registry is built; every plugin's list is collected. Names must be unique across plugins.

    Returns:
        Subclasses of :class:`benchmark.Task`.
    """


@hookspec
def bench_studies() -> list[Path]:
    """Return the study declarations this plugin ships (``bench study NAME``, ``bench study --list``, the claims of
    ``bench report``).

    Called whenever studies are listed or looked up; every plugin's list is collected. Each path is a study YAML file
    (its stem is the study's name; format: :mod:`benchmark.studies.declaration`) or a directory whose ``*.yaml`` files
    are studies. A plugin package finds its own files with ``importlib.resources``, e.g.
    ``[importlib.resources.files("my_plugin") / "studies"]`` (declare them as package data). Names must be unique
    across plugins; a clash is an error naming both plugins. A study's ``task`` may come from any plugin.

    Returns:
        Paths (``pathlib.Path`` or ``str``) of study files or directories.
    """


# -------------------------------------------------------------------------------------------------------------------
# Reporting
# -------------------------------------------------------------------------------------------------------------------


@hookspec
def bench_report_result(record: dict[str, Any]) -> None:
    """Called with each finished result record (one estimator on one selection), failed ones included.

    The record is the JSON-ready dict already written under the results directory (schema:
    :mod:`benchmark.contracts.records`); a plugin may export it elsewhere. It must not modify it. Every implementation
    is called, even after one has raised.
    """


@hookspec
def bench_run_finished(records: list[dict[str, Any]]) -> None:
    """Called once at the end of ``bench run`` with every record the run produced. Every implementation is called."""
