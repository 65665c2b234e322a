"""The asv suite's result files (``asv_bench/``, ``asv.conf.json``), read for ``bench timing``.

asv writes one JSON file per machine, commit and environment under ``<results>/<machine>/``, each holding, per
benchmark, the parameter lists and one value per parameter combination (their Cartesian product, in order):
a number, ``NaN`` for a skipped combination (``NotImplementedError`` in ``setup``) or ``null`` for a failed one.
:func:`load` reads one such file, chosen explicitly (never by file time): a machine, a commit and an environment.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from benchmark.common.errors import UnknownNameError, UsageError


@dataclasses.dataclass
class BenchmarkResult:
    """One benchmark's values: ``params`` (one list per parameter) and one value per combination, in order."""

    params: list[list[Any]]
    values: list[float | None]

    def value(self, *params: Any) -> float | None:
        """The value at ``params``: a number, ``NaN`` (skipped, or not in this file) or ``None`` (failed)."""
        index = 0
        for axis, param in zip(self.params, params):
            if param not in axis:
                return math.nan
            index = index * len(axis) + axis.index(param)
        return self.values[index] if index < len(self.values) else math.nan


@dataclasses.dataclass
class AsvResults:
    """One asv result file: a machine, a commit and an environment."""

    path: Path
    machine: dict[str, Any]
    commit: str
    date: int | None
    env_name: str
    python: str | None
    benchmarks: dict[str, BenchmarkResult]

    def value(self, name: str, *params: Any) -> float | None:
        """The value of benchmark ``name`` at ``params`` (``NaN`` where the benchmark is absent)."""
        benchmark = self.benchmarks.get(name)
        return math.nan if benchmark is None else benchmark.value(*params)

    def axis(self, name: str, position: int) -> list[Any]:
        """The values of parameter ``position`` of benchmark ``name`` (empty if absent)."""
        benchmark = self.benchmarks.get(name)
        return list(benchmark.params[position]) if benchmark is not None else []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"malformed asv file {str(path)!r}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"malformed asv file {str(path)!r}: not a JSON object")
    return data


def _parse(path: Path, machine: dict[str, Any]) -> AsvResults:
    data = _read_json(path)
    try:
        columns = data["result_columns"]
        benchmarks = {}
        for name, row in data["results"].items():
            fields = dict(zip(columns, row))
            params = [[ast.literal_eval(p) for p in axis] for axis in fields.get("params") or []]
            values = fields.get("result")
            values = [values] if not isinstance(values, list) else values
            benchmarks[name] = BenchmarkResult(params, values)
        return AsvResults(
            path, machine, data["commit_hash"], data.get("date"), data["env_name"], data.get("python"), benchmarks
        )
    except KeyError as error:
        raise UsageError(f"malformed asv result file {str(path)!r}: no {error} field") from None
    except (TypeError, ValueError, SyntaxError) as error:
        raise UsageError(f"malformed asv result file {str(path)!r}: {type(error).__name__}: {error}") from None


def load(
    results_dir: Path,
    machine: str | None = None,
    commit: str | None = None,
    env: str | None = None,
    head: str | None = None,
) -> AsvResults:
    """The asv result file for one machine, commit and environment.

    Args:
        results_dir: asv's ``results_dir`` (``.asv/results`` in this repository).
        machine: machine name; may be left out when there is one.
        commit: a commit hash or a prefix of one; may be left out when there is one commit, or when ``head`` has
            results.
        env: asv environment name; may be left out when the commit has results from one environment.
        head: the checked-out commit, the default among several.

    Raises:
        UsageError: nothing matches, or a choice is ambiguous (the message names the choices).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(
            f"no asv results directory {str(results_dir)!r}: run the asv suite first (docs/timing.md) "
            f"or pass --results-dir"
        )
    machines = sorted(p.name for p in results_dir.iterdir() if (p / "machine.json").is_file())
    if not machines:
        raise UsageError(f"no asv machine under {str(results_dir)!r} (no <machine>/machine.json)")
    if machine is None:
        if len(machines) > 1:
            raise UsageError(
                f"results from several machines under {str(results_dir)!r}: pass --machine "
                f"(choices: {', '.join(machines)})"
            )
        machine = machines[0]
    elif machine not in machines:
        raise UnknownNameError("machine", machine, machines)
    directory = results_dir / machine
    info = _read_json(directory / "machine.json")
    files = [_parse(path, info) for path in sorted(directory.glob("*.json")) if path.name != "machine.json"]
    if not files:
        raise UsageError(f"no asv result files for machine {machine!r} under {str(directory)!r}")
    commits = sorted({f.commit for f in files})
    if commit is not None:
        matching = [c for c in commits if c.startswith(commit)]
        if not matching:
            raise UsageError(
                f"no asv results for commit {commit!r} on machine {machine!r} "
                f"(commits with results: {', '.join(c[:8] for c in commits)})"
            )
        if len(matching) > 1:
            raise UsageError(f"commit prefix {commit!r} is ambiguous: {', '.join(matching)}")
        chosen = matching[0]
    elif len(commits) == 1:
        chosen = commits[0]
    elif head is not None and head in commits:
        chosen = head
    else:
        raise UsageError(
            f"results for several commits on machine {machine!r}: pass --commit "
            f"(choices: {', '.join(c[:8] for c in commits)})"
        )
    candidates = [f for f in files if f.commit == chosen]
    envs = sorted(f.env_name for f in candidates)
    if env is not None:
        if env not in envs:
            raise UnknownNameError("asv environment", env, envs)
        candidates = [f for f in candidates if f.env_name == env]
    elif len(envs) > 1:
        raise UsageError(
            f"commit {chosen[:8]} has results from several asv environments: pass --env (choices: {', '.join(envs)})"
        )
    return candidates[0]
