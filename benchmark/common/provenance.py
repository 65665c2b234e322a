"""Provenance: where a number comes from. The commit of the source tree (and whether it has uncommitted changes), the
versions and device of this process, and a digest of source code.

One module for every producer of measured numbers: result records (:mod:`benchmark.contracts.records`, through the
runner), the claims report and the timing tables, and the speed measurements against peer libraries
(:mod:`benchmark.peers`).
"""

from __future__ import annotations

import ast
import hashlib
import platform
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

VERSION = "0.1.0"
"""The harness's version (``benchmark.__version__``, recorded in every record; ``pyproject.toml`` states it too)."""
REPO = Path(__file__).resolve().parents[2]
"""The source tree the harness runs from (a checkout, or the installed packages' directory)."""
CODE_PATHS = ("benchmark", "estimators", "tasks")
"""The folders whose uncommitted changes mark a commit dirty: the harness and the built-in plugins."""
MEASUREMENTS = "benchmark/peers"
"""The measurement package inside the harness's folder: its edits change no result of the harness."""


def git_commit(paths: Sequence[str] = CODE_PATHS, root: Path = REPO) -> tuple[str | None, bool | None]:
    """The commit of the harness's source tree and whether ``paths`` in it have uncommitted changes (``None``, ``None``
    outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def commit_label(paths: Sequence[str] = CODE_PATHS, root: Path = REPO) -> str:
    """The short commit for a page of measurements: ``abc1234``, ``abc1234 (with uncommitted changes)`` where
    ``paths`` differ from it, ``unknown`` outside git."""
    commit, dirty = git_commit(paths, root)
    if commit is None:
        return "unknown"
    try:
        short = subprocess.run(
            ["git", "rev-parse", "--short", commit], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        short = commit[:7]
    return short + (" (with uncommitted changes)" if dirty else "")


def environment(device: str) -> dict[str, Any]:
    """Versions, commit and device of this process, for every record of a run."""
    commit, dirty = git_commit()
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {
        "commit": commit,
        "dirty": dirty,
        "versions": {"bench": VERSION, "torch": torch.__version__, "python": platform.python_version()},
        "device": {"type": device, "name": name},
    }


def code_files(root: Path = REPO) -> list[Path]:
    """The Python files of our code under ``root``, sorted: the harness with its subpackages and the built-in plugins
    (:data:`CODE_PATHS`), without the measurement package (:data:`MEASUREMENTS`). What :func:`source_digest` digests
    for both of its users, so that both follow one rule for when a result of our code is stale."""
    return sorted(
        path
        for folder in CODE_PATHS
        for path in (Path(root) / folder).rglob("*.py")
        if not path.relative_to(root).as_posix().startswith(MEASUREMENTS + "/")
    )


def _code_only(node: ast.AST) -> ast.AST:
    """``node`` without its docstrings (every bare string statement), in place."""
    for field in ("body", "orelse", "finalbody"):
        statements = getattr(node, field, None)
        if isinstance(statements, list) and statements and isinstance(statements[0], ast.stmt):
            kept = [
                s
                for s in statements
                if not (
                    isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)
                )
            ]
            setattr(node, field, kept or [ast.Pass()])
    for child in ast.iter_child_nodes(node):
        _code_only(child)
    return node


def source_digest(paths: Iterable[Path], root: Path = REPO) -> str:
    """sha256 (hex) of the code of the Python files ``paths``, in the given order: of each module's syntax tree
    without its docstrings, with its path (relative to ``root`` where it is below it, else its name). The one rule
    for when a result computed by our code is stale: editing a docstring or a comment changes nothing, editing code
    does. Used for the per-run records a study reuses (:func:`benchmark.studies.run.code_digest`) and for our
    measurements against peer libraries (:func:`benchmark.peers.speed_vs_peers.our_code`)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        try:
            label = path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            label = path.name
        tree = _code_only(ast.parse(path.read_bytes()))
        digest.update(label.encode() + b"\0" + ast.dump(tree).encode())
    return digest.hexdigest()
