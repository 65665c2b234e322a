"""``bench study NAME``: a declared sweep of task options, run point by point through :class:`~benchmark.runner.Run`.

A study is a YAML file under ``tasks/studies/`` (read with the safe loader of :mod:`benchmark.config`)::

    name: iris-depth                      # the file's stem
    title: Spearman against depth
    paper: section 5.1, Fig. 1c, 2b, 2c; appendix A, Fig. 4
    task: iris
    base: {width: 5}                      # task options of every point
    sweep:                                # the cartesian product of these task options, in this order
      depth: [1, 2, 3, 4, 5, 6, 7, 8]
      activation: [relu, tanh]
    seeds: [0, 1, 2]                      # seed = data split + initialisation
    estimators: [exact]
    estimator_options: {lissa: {depth: 2000}}
    selections: [top]
    run: {gt_chunk_size: 64}              # options of each run: gt_chunk_size, gt_seeds, threads
    panels:                               # one figure each (see benchmark.figures and benchmark.claims)
      - name: spearman
        title: Spearman against depth
        figure: Fig. 1c
        kind: line                        # line (x against y, error bars over seeds) or scatter (points table)
        x: depth
        y: spearman
        series: [activation]
        where: {estimator: exact, selection: top}
        claims:
          - {id: depth, section: "5.1", figure: Fig. 1c, text: Spearman falls with depth, paper: falls,
             rule: {kind: trend, direction: decreasing}}

Every point and seed is one run: optima and leave-one-out ground truth come from the shared cache, and a finished
run's records are kept there too (keyed by its options and a digest of the code), so a rerun after an interruption
redoes only the runs that had not finished, and a rerun with other estimator options re-trains nothing. A task may offer two optional speed-ups, both used when present:
``Task.train_many(tasks, seeds, context)`` trains many optima into the cache at once (each equal to the one its
``build`` trains), and ``task.descend(problem, thetas, weights, recipe, progress, description)`` replaces
:func:`benchmark.training.descend` for the leave-one-out re-training.

Outputs (``--output-dir``, default ``studies/`` beside the user's results directory, ``~/.local/share/bench/studies``;
``--publish``: the committed ``leaderboards/studies``): ``NAME.csv`` with one row per point x seed x estimator x
selection (the resolved task config, metrics, diagnostics, commit), ``NAME-points.csv`` with one row per scored
training point when a panel plots them, and ``NAME-PANEL.png`` per panel. The per-run JSON records go to the cache
directory (``study-records/NAME``), not into the repository.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch

import tasks

from benchmark import config as configuration
from benchmark.cache import Cache, digest
from benchmark.errors import UnknownNameError, UsageError
from benchmark.groundtruth import GroundTruth
from benchmark.plugins import Registry
from benchmark.runner import Run, RunConfig, resolve_device
from benchmark.task import BuildContext

log = logging.getLogger("bench")

STUDIES_DIR = Path(tasks.__file__).resolve().parent / "studies"
"""Where the built-in study declarations live."""
DEFAULT_OUTPUT_DIR = Path("leaderboards") / "studies"
"""Where the committed study results are, in a source checkout (``bench study --publish`` writes them)."""
PANEL_KINDS = ("line", "scatter")
TABLES = ("rows", "points")
RUN_FIELDS = {"gt_chunk_size": int, "gt_seeds": int, "threads": int}

ROW_COLUMNS = (
    "study", "point", "seed", "estimator", "selection", "status", "failure", "task", "task_version",
    "test_point_index", "test_loss", "k", "pearson", "pearson_p", "spearman", "spearman_p", "undefined",
    "param_norm_pearson", "param_norm_spearman", "ihvp_residual", "top_eigenvalue", "bottom_eigenvalue",
    "gradient_norm", "converged", "n_params", "n_train", "gt_drift", "drift_to_effect", "median_abs_effect",
    "prepare_s", "query_s", "estimator_hyperparameters", "estimator_diagnostics", "commit", "dirty", "run_id",
)
"""The fixed columns of a study CSV; the task's config fields come after ``task_version``."""
POINT_COLUMNS = ("train_index", "estimated", "retrained", "estimated_param_norm", "retrained_param_norm",
                 "abs_log_norm_ratio")
"""Per-training-point columns of ``NAME-points.csv`` (after the study, point, seed, estimator, selection and the
swept options); ``abs_log_norm_ratio`` is ``|log10(estimated / re-trained parameter-change norm)|``."""


# -- declarations ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Claim:
    """A claim of the paper that a panel tests, with the rule that decides it on the study's CSV.

    Attributes:
        id: short identifier, unique in the study.
        section: the paper's section (``5.1``, ``5.2``).
        figure: the paper's figure or table.
        text: the claim, in words.
        paper: the paper's number or finding, as printed in the claims table.
        rule: how :mod:`benchmark.claims` decides it (``kind`` plus the kind's fields).
    """

    id: str
    section: str
    figure: str
    text: str
    paper: str
    rule: dict[str, Any]


@dataclasses.dataclass
class Panel:
    """One figure of a study.

    Attributes:
        name: file-name part (``NAME-PANEL.png``).
        title: figure title.
        figure: the paper's figure it reproduces.
        kind: ``line`` (mean of ``y`` against ``x`` per series, error bars = standard deviation over seeds) or
            ``scatter`` (one dot per row of ``table``).
        x, y: column names.
        series: columns whose values make one line or colour each.
        facet: a column whose values make one subplot each (or ``None``).
        where: filter of the rows, column -> value or list of values.
        table: ``rows`` (the study CSV) or ``points`` (one row per scored training point).
        xscale, yscale: ``linear``, ``log`` or ``symlog``.
        hline: a horizontal reference line (e.g. a threshold), or ``None``.
        caption: what the panel shows, for the report.
        claims: what the panel tests.
    """

    name: str
    title: str
    figure: str
    kind: str
    x: str
    y: str
    series: list[str]
    facet: str | None
    where: dict[str, Any]
    table: str
    xscale: str
    yscale: str
    hline: float | None
    caption: str
    claims: list[Claim]


@dataclasses.dataclass
class Study:
    """A parsed study declaration (see the module docstring)."""

    name: str
    title: str
    paper: str
    description: str
    path: Path
    task: str
    base: dict[str, Any]
    sweep: dict[str, list[Any]]
    seeds: list[int]
    estimators: list[str]
    estimator_options: dict[str, dict[str, Any]]
    selections: list[str]
    run: dict[str, Any]
    panels: list[Panel]

    def points(self) -> list[dict[str, Any]]:
        """The task options of every sweep point (base options plus one combination of the swept values)."""
        keys = list(self.sweep)
        return [{**self.base, **dict(zip(keys, values))} for values in itertools.product(*self.sweep.values())]

    def claims(self) -> list[tuple[Panel, Claim]]:
        """Every claim, with its panel."""
        return [(panel, claim) for panel in self.panels for claim in panel.claims]

    @property
    def needs_points(self) -> bool:
        """Whether a panel or a claim reads the per-training-point table."""
        return any(p.table == "points" or any(c.rule.get("table") == "points" for c in p.claims) for p in self.panels)


class _Fields:
    """Typed access to a mapping of a declaration, raising one-line errors that name the file and the field."""

    def __init__(self, path: Path, where: str, data: Any):
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise self.error("", f"expected a mapping, got {_kind(data)}")
        self.data = data

    def error(self, field: str, message: str) -> UsageError:
        name = f"{self.where}.{field}" if self.where and field else (self.where or field)
        return UsageError(f"{self.path}: field {name!r}: {message}")

    def get(self, field: str, kind: type | tuple[type, ...], default: Any = ..., *, required: bool = False) -> Any:
        if field not in self.data:
            if required or default is ...:
                raise self.error(field, "missing")
            return default
        value = self.data[field]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.error(field, f"expected {expected}, got {value!r}")
        return value

    def text(self, field: str, default: Any = ...) -> str:
        value = self.get(field, str, default)
        if field in self.data and not value.strip():
            raise self.error(field, "must not be empty")
        return value

    def names(self, field: str, default: Any = ...) -> list[str]:
        value = self.get(field, list, default)
        if not value or not all(isinstance(v, str) and v for v in value):
            raise self.error(field, f"expected a non-empty list of names, got {value!r}")
        return list(value)

    def unknown(self, allowed: Sequence[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise UnknownNameError(f"field in {self.path} ({self.where or 'top level'})", key, allowed)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _filter(fields: _Fields, name: str) -> dict[str, Any]:
    value = fields.get(name, dict, {})
    for column, wanted in value.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise fields.error(f"{name}.{column}", f"expected a value or a list of values, got {wanted!r}")
    return dict(value)


def _claim(path: Path, where: str, data: Any) -> Claim:
    from benchmark.claims import check_rule

    fields = _Fields(path, where, data)
    fields.unknown(("id", "section", "figure", "text", "paper", "rule"))
    rule = fields.get("rule", dict, required=True)
    problem = check_rule(rule)
    if problem:
        raise fields.error("rule", problem)
    for column in ("where", "a", "b"):
        if column in rule:
            _filter(_Fields(path, f"{where}.rule", rule), column)
    return Claim(id=fields.text("id"), section=str(fields.get("section", (str, int, float))),
                 figure=fields.text("figure"), text=fields.text("text"), paper=str(fields.get("paper", (str, int, float))),
                 rule=dict(rule))


def _panel(path: Path, where: str, data: Any) -> Panel:
    fields = _Fields(path, where, data)
    fields.unknown(("name", "title", "figure", "kind", "x", "y", "series", "facet", "where", "table", "xscale",
                    "yscale", "hline", "caption", "claims"))
    kind = fields.text("kind", "line")
    if kind not in PANEL_KINDS:
        raise fields.error("kind", f"unknown kind {kind!r} (choices: {', '.join(PANEL_KINDS)})")
    table = fields.text("table", "points" if kind == "scatter" else "rows")
    if table not in TABLES:
        raise fields.error("table", f"unknown table {table!r} (choices: {', '.join(TABLES)})")
    scales = {}
    for axis in ("xscale", "yscale"):
        scales[axis] = fields.text(axis, "linear")
        if scales[axis] not in ("linear", "log", "symlog"):
            raise fields.error(axis, f"unknown scale {scales[axis]!r} (choices: linear, log, symlog)")
    series = fields.get("series", (list, str), [])
    series = [series] if isinstance(series, str) else series
    if not all(isinstance(s, str) and s for s in series):
        raise fields.error("series", f"expected column names, got {series!r}")
    name = fields.text("name")
    if not all(ch.isalnum() or ch in "-_" for ch in name):
        raise fields.error("name", f"{name!r} must be letters, digits, '-' or '_' (it names a file)")
    claims = [_claim(path, f"{where}.claims[{i}]", c) for i, c in enumerate(fields.get("claims", list, []))]
    return Panel(name=name, title=fields.text("title"), figure=fields.text("figure", ""), kind=kind,
                 x=fields.text("x"), y=fields.text("y"), series=list(series), facet=fields.get("facet", str, None),
                 where=_filter(fields, "where"), table=table, xscale=scales["xscale"], yscale=scales["yscale"],
                 hline=fields.get("hline", (int, float), None), caption=fields.text("caption", ""), claims=claims)


def parse_study(path: Path, data: Any) -> Study:
    """Check a study declaration (``data`` read from ``path``) and return it; :class:`UsageError` naming the file and
    the field otherwise."""
    fields = _Fields(path, "", data)
    fields.unknown(("name", "title", "paper", "description", "task", "base", "sweep", "seeds", "estimators",
                    "estimator_options", "selections", "run", "panels"))
    name = fields.text("name")
    if name != path.stem:
        raise fields.error("name", f"{name!r} differs from the file name {path.stem!r}")
    sweep = fields.get("sweep", dict, required=True)
    if not sweep:
        raise fields.error("sweep", "must sweep at least one option")
    for option, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise fields.error(f"sweep.{option}", f"expected a non-empty list of values, got {values!r}")
    seeds = fields.get("seeds", list, [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise fields.error("seeds", f"expected a list of non-negative integers, got {seeds!r}")
    estimator_options = fields.get("estimator_options", dict, {})
    for estimator, options in estimator_options.items():
        if not isinstance(options, dict):
            raise fields.error(f"estimator_options.{estimator}", f"expected a mapping, got {options!r}")
    run = fields.get("run", dict, {})
    for option, value in run.items():
        if option not in RUN_FIELDS:
            raise fields.error(f"run.{option}", f"unknown run option (choices: {', '.join(RUN_FIELDS)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fields.error(f"run.{option}", f"expected a positive integer, got {value!r}")
    panels_data = fields.get("panels", list, [])
    panels = [_panel(path, f"panels[{i}]", p) for i, p in enumerate(panels_data)]
    seen: set[str] = set()
    for i, panel in enumerate(panels):
        if panel.name in seen:
            raise UsageError(f"{path}: field 'panels[{i}].name': {panel.name!r} is used twice")
        seen.add(panel.name)
    ids: list[str] = []
    for panel in panels:
        for claim in panel.claims:
            if claim.id in ids:
                raise UsageError(f"{path}: field 'panels[{panels.index(panel)}].claims': claim id {claim.id!r} is "
                                 f"used twice")
            ids.append(claim.id)
    base = fields.get("base", dict, {})
    overlap = sorted(set(base) & set(sweep))
    if overlap:
        raise fields.error("base", f"{overlap[0]!r} is also swept")
    return Study(
        name=name, title=fields.text("title"), paper=fields.text("paper", ""), description=fields.text("description", ""),
        path=path, task=fields.text("task"), base=dict(base), sweep=dict(sweep), seeds=list(seeds),
        estimators=fields.names("estimators"), estimator_options={k: dict(v) for k, v in estimator_options.items()},
        selections=fields.names("selections", ["top"]), run=dict(run), panels=panels,
    )


def load_study(path: str | Path) -> Study:
    """Read and check the study declaration at ``path``."""
    path = Path(path)
    return parse_study(path, configuration.load_yaml(path))


def available(directory: Path = STUDIES_DIR) -> dict[str, Path]:
    """The declared studies by name."""
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def find_study(name: str, directory: Path = STUDIES_DIR) -> Study:
    """The study called ``name`` (a declaration under ``directory``) or at the path ``name`` (a ``.yaml`` file)."""
    if name.endswith((".yaml", ".yml")):
        return load_study(name)
    studies = available(directory)
    if name not in studies:
        raise UnknownNameError("study", name, studies)
    return load_study(studies[name])


# -- running --------------------------------------------------------------------------------------------------------
class _TaskGroundTruth(GroundTruth):
    """Ground truth whose re-training goes through the task's own ``descend`` (same recipe, same cache entries).

    The reference (no point removed) is re-trained in one batch with the leave-one-out models the request misses:
    one stacked model costs almost as much as many on a CPU, so this saves most of the reference's time.
    """

    def __init__(self, *args: Any, descend: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._task_descend = descend
        self._upcoming: list[int] = []
        self._ready: dict[int, Any] = {}

    def effects(self, removed: Sequence[int], executor: Any = None) -> Any:
        self._upcoming = self.missing(removed) if executor is None else []
        try:
            return super().effects(removed, executor)
        finally:
            self._upcoming, self._ready = [], {}

    def retrain(self, weights: Any, description: str) -> Any:
        removed = [(row == 0).nonzero().flatten().tolist() for row in weights]
        if all(len(r) == 1 and r[0] in self._ready for r in removed):
            return torch.stack([self._ready.pop(r[0]) for r in removed])
        if len(weights) == 1 and not removed[0] and self._upcoming:
            batch = torch.ones(1 + len(self._upcoming), self.problem.n_train, dtype=weights.dtype,
                               device=weights.device)
            batch[torch.arange(1, len(batch)), torch.tensor(self._upcoming)] = 0.0
            thetas = self._descend(batch, f"re-training the reference and {len(self._upcoming)} models")
            self._ready = dict(zip(self._upcoming, thetas[1:]))
            return thetas[:1]
        return self._descend(weights, description)

    def _descend(self, weights: Any, description: str) -> Any:
        start = self.problem.theta.unsqueeze(0).expand(len(weights), -1)
        return self._task_descend(self.problem, start, weights, self.recipe, self.progress, description)


class StudyRun(Run):
    """A :class:`Run` that re-trains leave-one-out models with the task's ``descend`` when it has one."""

    def ground_truths(self, problem: Any, protocol: Any, test_index: int) -> list[GroundTruth]:
        descend = getattr(self.task, "descend", None)
        plain = super().ground_truths(problem, protocol, test_index)
        if descend is None or self.config.executor != "local":
            return plain
        return [_TaskGroundTruth(g.problem, g.recipe, self.cache, self.task.problem_key(self.config.seed), test_index,
                                 self.config.gt_chunk_size, self.config.progress, descend=descend) for g in plain]


@dataclasses.dataclass
class StudyOptions:
    """How to run a study (the command line's choices over the declaration's).

    Attributes:
        estimators, seeds, selections: replace the declared ones when given.
        overrides: ``--set`` values: task options (applied to every point) and estimator hyperparameters.
        output_dir: where the CSV files and figures go.
        cache_dir: the cache (optima, ground truth, and the per-run records under ``study-records/``).
        device, threads, progress, plugins: as for ``bench run``.
    """

    estimators: list[str] | None = None
    seeds: list[int] | None = None
    selections: list[str] | None = None
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    output_dir: Path = dataclasses.field(default_factory=lambda: _default_output_dir())
    cache_dir: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    plugins: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StudyResult:
    """What a study run wrote."""

    rows: list[dict[str, Any]]
    points: list[dict[str, Any]]
    files: list[Path]
    seconds: float
    optima_trained: int | None


def _resolved(study: Study, options: StudyOptions, registry: Registry) -> tuple[list[str], dict[str, dict], list[int],
                                                                               list[str], dict[str, Any]]:
    estimators = options.estimators or study.estimators
    for name in estimators:
        registry.estimator(name)
    estimator_options = {k: dict(v) for k, v in study.estimator_options.items() if k in estimators}
    fixed: dict[str, Any] = {}
    for namespace, values in options.overrides.items():
        if namespace == study.task:
            swept = sorted(set(values) & set(study.sweep))
            if swept:
                raise UsageError(f"--set {study.task}.{swept[0]}: {swept[0]!r} is swept by study {study.name!r}")
            fixed.update(values)
        elif namespace in registry.estimators:
            estimator_options.setdefault(namespace, {}).update(values)
        else:
            raise UnknownNameError("task or estimator in --set", namespace, [study.task, *registry.estimators])
    return (list(estimators), estimator_options, list(options.seeds or study.seeds),
            list(options.selections or study.selections), fixed)


def table_columns(study: Study, task_cls: type) -> dict[str, set[str]]:
    """The columns the study's tables will have: ``rows`` (the CSV) and ``points``."""
    config = [f.name for f in dataclasses.fields(task_cls.Config)]
    rows = set(ROW_COLUMNS) | {name if name not in ROW_COLUMNS else f"task_{name}" for name in config}
    points = {"study", "point", "seed", "estimator", "selection", *study.sweep, *POINT_COLUMNS}
    return {"rows": rows, "points": points}


def check_columns(study: Study, task_cls: type) -> None:
    """Every column a panel or a claim names exists in its table; :class:`UsageError` naming the field otherwise."""
    columns = table_columns(study, task_cls)
    for i, panel in enumerate(study.panels):
        named = {"x": [panel.x], "y": [panel.y], "series": panel.series, "facet": [panel.facet] if panel.facet else [],
                 "where": list(panel.where)}
        for j, claim in enumerate(panel.claims):
            rule = claim.rule
            by = rule.get("by") or []
            named[f"claims[{j}].rule"] = [
                *(rule[k] for k in ("x", "y") if k in rule), *([by] if isinstance(by, str) else by),
                *(c for k in ("where", "a", "b") for c in rule.get(k, {})),
            ]
        for field, names in named.items():
            table = panel.table if not field.startswith("claims") else panel.claims[int(field[7:].split("]")[0])].rule.get(
                "table", "rows")
            for name in names:
                if name not in columns[table]:
                    raise UsageError(f"{study.path}: field 'panels[{i}].{field}': no column {name!r} in the "
                                     f"{table} table (columns: {', '.join(sorted(columns[table]))})")


def code_digest(registry: Registry, estimators: Sequence[str], task: str) -> str:
    """sha256 of the source of the harness, the built-in plugins and the modules of the task and estimators used
    (plugins' too): a finished run's records are reused only while none of it changed."""
    import hashlib
    import inspect

    files = {p for package in ("benchmark", "estimators", "tasks")
             for p in (STUDIES_DIR.parent.parent / package).glob("*.py")}
    for cls in [registry.task(task), *(registry.estimator(name) for name in estimators)]:
        source = inspect.getsourcefile(cls)
        if source:
            files.add(Path(source))
    hasher = hashlib.sha256()
    for path in sorted(files, key=str):
        hasher.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()


def run_key(config: RunConfig, code: str) -> dict[str, Any]:
    """What determines a run's records: its resolved options and the code (:func:`code_digest`)."""
    return {
        "task": config.task, "task_options": config.task_options, "estimators": config.estimators,
        "estimator_options": config.estimator_options, "seed": config.seed, "device": config.device,
        "selections": config.selections, "gt_seeds": config.gt_seeds, "gt_chunk_size": config.gt_chunk_size,
        "plugins": config.plugins, "code": code,
    }


def run_study(study: Study, registry: Registry, pm: pluggy.PluginManager, options: StudyOptions) -> StudyResult:
    """Run every point x seed of ``study``, write its CSV files and figures; returns what was written."""
    from benchmark import figures

    begin = time.perf_counter()
    task_cls = registry.task(study.task)
    estimators, estimator_options, seeds, selections, fixed = _resolved(study, options, registry)
    for name, values in estimator_options.items():
        configuration.build(registry.estimator(name).Config, values, name)
    points = [{**point, **fixed} for point in study.points()]
    tasks = []
    for point in points:
        try:
            tasks.append(task_cls(configuration.build(task_cls.Config, point, study.task)))
        except UsageError as error:
            raise UsageError(f"{study.path}: {error}") from None
    check_columns(study, task_cls)
    cache = Cache(options.cache_dir)
    records_dir = cache.root / "study-records" / study.name
    total = len(points) * len(seeds)
    trained = None
    device = resolve_device(options.device)
    train_many = getattr(task_cls, "train_many", None)
    if train_many is not None:
        log.info("study %s: training the optima of %d runs (cached ones are reused)", study.name, total)
        pairs = [(task, seed) for task in tasks for seed in seeds]
        threads = torch.get_num_threads()
        wanted = options.threads or study.run.get("threads") or (task_cls.cpu_threads if device == "cpu" else None)
        if wanted:
            torch.set_num_threads(wanted)
        try:
            trained = train_many([t for t, _ in pairs], [s for _, s in pairs],
                                 BuildContext(device, 0, cache, options.progress))
        finally:
            torch.set_num_threads(threads)
        log.info("study %s: %d optima trained, %d cached", study.name, trained, total - trained)
    code = code_digest(registry, estimators, study.task)
    rows: list[dict[str, Any]] = []
    point_rows: list[dict[str, Any]] = []
    for number, ((index, point), seed) in enumerate(itertools.product(enumerate(points), seeds), start=1):
        swept = {k: point[k] for k in study.sweep}
        log.info("study %s: run %d/%d: %s, seed %d", study.name, number, total,
                 ", ".join(f"{k}={v}" for k, v in swept.items()), seed)
        config = RunConfig(
            task=study.task, estimators=estimators, task_options=point, estimator_options=estimator_options,
            seed=seed, device=options.device, selections=selections, cache_dir=cache.root, results_dir=records_dir,
            progress=options.progress, gt_chunk_size=study.run.get("gt_chunk_size"),
            gt_seeds=study.run.get("gt_seeds", 1), threads=options.threads or study.run.get("threads"),
            plugins=list(options.plugins),
        )
        started = time.perf_counter()
        key = run_key(config, code)
        path = cache.root / "study-runs" / f"{digest(key)}.json"
        stored = cache.read_json(path, key)
        if stored is not None:
            written = stored["records"]
            log.info("study %s: run %d/%d: its records are cached (same config, same code)", study.name, number, total)
        else:
            written = StudyRun(config, registry, pm).execute()
            cache.write_json(path, key, {"records": written})
            gt = written[0]["ground_truth"] if written else {}
            log.info("study %s: run %d/%d done in %.1f s (ground truth: %s computed, %s cached)", study.name, number,
                     total, time.perf_counter() - started, gt.get("computed"), gt.get("cached"))
        for record in written:
            rows.append(record_row(record, study.name, index))
            if study.needs_points:
                point_rows.extend(record_points(record, study.name, index, list(study.sweep)))
    options.output_dir.mkdir(parents=True, exist_ok=True)
    files = [write_csv(options.output_dir / f"{study.name}.csv", rows)]
    if study.needs_points:
        files.append(write_csv(options.output_dir / f"{study.name}-points.csv", point_rows))
    files += figures.plot_study(study, options.output_dir)
    return StudyResult(rows, point_rows, files, time.perf_counter() - begin, trained)


# -- tables ---------------------------------------------------------------------------------------------------------
def _correlation(metrics: dict[str, Any], name: str) -> tuple[float | None, float | None, str | None]:
    entry = (metrics or {}).get(name) or {}
    return entry.get("value"), entry.get("p_value"), entry.get("undefined")


def record_row(record: dict[str, Any], study: str, point: int) -> dict[str, Any]:
    """One CSV row from a result record (see :mod:`benchmark.records`): task config, metrics, diagnostics."""
    metrics = record.get("metrics") or {}
    problem = record["diagnostics"]["problem"]
    gt = record["ground_truth"]
    pearson, pearson_p, pearson_why = _correlation(metrics, "pearson")
    spearman, spearman_p, spearman_why = _correlation(metrics, "spearman")
    norm_pearson, _, _ = _correlation(metrics, "param_norm_pearson")
    norm_spearman, _, _ = _correlation(metrics, "param_norm_spearman")
    row: dict[str, Any] = {
        "study": study, "point": point, "seed": record["seed"], "estimator": record["estimator"]["name"],
        "selection": record["selection"]["kind"], "status": record["status"], "failure": record["failure"],
        "task": record["task"]["name"], "task_version": record["task"]["version"],
    }
    for key, value in sorted(record["task"]["config"].items()):  # sorted: cached records come back key-sorted
        row[key if key not in ROW_COLUMNS else f"task_{key}"] = value
    row.update({
        "test_point_index": record["test_point"]["index"], "test_loss": record["test_point"]["loss"],
        "k": record["selection"]["size"], "pearson": pearson, "pearson_p": pearson_p, "spearman": spearman,
        "spearman_p": spearman_p, "undefined": spearman_why or pearson_why, "param_norm_pearson": norm_pearson,
        "param_norm_spearman": norm_spearman, "ihvp_residual": metrics.get("ihvp_relative_residual"),
        "top_eigenvalue": problem.get("top_eigenvalue"), "bottom_eigenvalue": problem.get("bottom_eigenvalue"),
        "gradient_norm": problem.get("gradient_norm"), "converged": problem.get("converged"),
        "n_params": problem.get("n_params"), "n_train": problem.get("n_train"), "gt_drift": gt.get("reference_drift"),
        "drift_to_effect": gt.get("drift_to_effect"), "median_abs_effect": gt.get("median_abs_effect"),
        "prepare_s": record["timings"].get("prepare_s"), "query_s": record["timings"].get("query_s"),
        "estimator_hyperparameters": json.dumps(record["estimator"]["hyperparameters"], sort_keys=True),
        "estimator_diagnostics": json.dumps(record["diagnostics"].get("estimator") or {}, sort_keys=True),
        "commit": record.get("commit"), "dirty": record.get("dirty"), "run_id": record["run_id"],
    })
    return row


def record_points(record: dict[str, Any], study: str, point: int, swept: list[str]) -> list[dict[str, Any]]:
    """One row per scored training point of a record (none for a failed record)."""
    points = record.get("points")
    if not points:
        return []
    config = record["task"]["config"]
    head = {"study": study, "point": point, "seed": record["seed"], "estimator": record["estimator"]["name"],
            "selection": record["selection"]["kind"], **{k: config[k] for k in swept}}
    estimated_norms = points.get("estimated_param_norm") or [None] * len(points["train_indices"])
    out = []
    for i, index in enumerate(points["train_indices"]):
        estimated_norm, retrained_norm = estimated_norms[i], points["retrained_param_norm"][i]
        ratio = None
        if estimated_norm and retrained_norm and estimated_norm > 0 and retrained_norm > 0:
            ratio = abs(math.log10(estimated_norm / retrained_norm))
        out.append({**head, "train_index": index, "estimated": points["estimated"][i],
                    "retrained": points["retrained"][i], "estimated_param_norm": estimated_norm,
                    "retrained_param_norm": retrained_norm, "abs_log_norm_ratio": ratio})
    return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts; the union of their keys, in first-seen order, as columns); empty cells for ``None``."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})
    return path


def read_table(path: Path) -> Any:
    """A study CSV as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=True)


# -- command line ---------------------------------------------------------------------------------------------------
def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(item) for item in _split(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --seeds {value!r}: expected comma-separated integers") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"bad --seeds {value!r}: expected non-negative integers")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench study``."""
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="studies under tasks/studies/ (see --list) or paths to .yaml files, run in this order")
    parser.add_argument("--list", action="store_true", help="list the declared studies and exit")
    parser.add_argument("--estimator", "--estimators", dest="estimators", type=_split,
                        help="comma-separated estimators, replacing the study's (plugins' too, with -p)")
    parser.add_argument("--seeds", type=_seeds, help="comma-separated seeds, replacing the study's")
    parser.add_argument("--selection", "--selections", dest="selections", type=_split,
                        help="which training points to score, replacing the study's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME.FIELD=VALUE",
                        help="a task option for every point (not a swept one) or an estimator hyperparameter")
    parser.add_argument("--output-dir", type=Path,
                        help="where the CSV files and figures go (default: studies/ beside the results directory, "
                             "$XDG_DATA_HOME/bench/studies or ~/.local/share/bench/studies)")
    parser.add_argument("--publish", action="store_true",
                        help=f"write the repository's committed {DEFAULT_OUTPUT_DIR} instead")
    parser.add_argument("--cache-dir", type=Path, help="cache directory (default $BENCH_CACHE_DIR or ~/.cache/bench)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, help="torch threads on a CPU (default: the task's choice)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from the existing CSV files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _default_output_dir() -> Path:
    from benchmark.runner import results_home

    return results_home() / "studies"


def output_dir(args: argparse.Namespace) -> Path:
    """``--output-dir``; with ``--publish`` the committed studies; else ``studies/`` in the user's results home."""
    from benchmark.runner import published_dir, results_home

    if args.publish:
        if args.output_dir is not None:
            raise UsageError(f"--publish writes {published_dir() / 'studies'}; it cannot be combined with "
                             f"--output-dir {args.output_dir}")
        return published_dir() / "studies"
    return args.output_dir if args.output_dir is not None else results_home() / "studies"


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench study``."""
    if not args.list:
        args.output_dir = output_dir(args)
    if args.list:
        for name, path in available().items():
            study = load_study(path)
            runs = len(study.points()) * len(study.seeds)
            print(f"{name:<22} {study.task:<8} {runs:>4} runs  {study.title}")
        return 0
    if not args.names:
        raise UsageError(f"no study given: bench study NAME (choices: {', '.join(available())}) or --list")
    studies = [find_study(name) for name in args.names]
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"bad --threads {args.threads}: expected a positive integer")
    for study in studies:
        _run_command(study, args, registry, pm)
    return 0


def _run_command(study: Study, args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> None:
    from benchmark import claims, figures

    if args.plot_only:
        files = figures.plot_study(study, args.output_dir)
    else:
        options = StudyOptions(
            estimators=args.estimators, seeds=args.seeds, selections=args.selections,
            overrides=configuration.parse_set(args.overrides), output_dir=args.output_dir, cache_dir=args.cache_dir,
            device=args.device, threads=args.threads, progress=not args.no_progress, plugins=list(args.plugins),
        )
        result = run_study(study, registry, pm, options)
        files = result.files
        trained = "" if result.optima_trained is None else f", {result.optima_trained} optima trained"
        log.info("study %s: %d rows in %.1f s%s", study.name, len(result.rows), result.seconds, trained)
    for path in files:
        print(path)
    for verdict in claims.evaluate_study(study, args.output_dir):
        print(f"{verdict.claim.figure}: {verdict.claim.text}: {verdict.verdict} ({verdict.measured})")
