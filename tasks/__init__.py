"""Built-in task plugins."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def shipped_studies(prefix: str) -> list[Path]:
    """The study declarations under ``tasks/studies/`` (package data) whose names start with ``prefix``: what a
    built-in task plugin answers to the ``bench_studies`` hook."""
    directory = importlib.resources.files("tasks") / "studies"
    return sorted(
        Path(str(entry))
        for entry in directory.iterdir()
        if entry.name.startswith(prefix) and entry.name.endswith(".yaml")
    )
