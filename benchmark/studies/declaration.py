"""A study's declaration: the YAML file of ``bench study NAME``, parsed and checked, and where the declarations are.

A study is a YAML file shipped by a plugin (the ``bench_studies`` hook, :mod:`benchmark.contracts.hookspecs`; the
built-in ones are under ``tasks/studies/``), read with the safe loader of :mod:`benchmark.common.config`::


    name: iris-depth                      # the file's stem
    title: Spearman against depth
    paper: section 5.1, Fig. 1c, 2b, 2c; appendix A, Fig. 4
    task: iris
    base: {width: 5}                      # task options of every point
    sweep:                                # the cartesian product of these task options, in this order
      depth: [1, 2, 3, 4, 5, 6, 7, 8]
      activation: [relu, tanh]
    seeds: [0, 1, 2]                      # seed = data split + initialisation
    estimators: [exact, lissa]
    estimator_options: {lissa: {depth: 2000}}
    estimator_sweep:                      # per estimator, the cartesian product of these Config fields, in this order
      lissa: {repeats: [1, 4]}
    selections: [top]
    run: {gt_chunk_size: 64}              # options of each run: gt_chunk_size, gt_seeds, threads, truths,
                                          # lds_subsets, lds_fraction, lds_test_points
    panels:                               # one figure each (see benchmark.studies.figures and benchmark.studies.claims)
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
          - {id: pbrf-depth, ..., rule: {..., where: {truth: pbrf}}, restates: iris-depth/depth}  # another truth

``sweep`` and ``estimator_sweep`` may each be left out, not both. Every point and seed is one run, which evaluates
each estimator of ``estimator_sweep`` once per combination of its swept values (over its ``estimator_options``) on the
same problem and ground truth. A swept field is a column of the study's tables named as the field (``repeats``),
usable in a panel's ``x``, ``series``, ``facet`` and ``where`` and in a rule, like a swept task option; an
estimator that does not sweep it has no value there (an empty cell; NaN in pandas). Several estimators may sweep a
field of the same name: the column holds each one's own value. A swept field must be a Config field of its estimator
(checked against the registry by :func:`check_estimator_sweep`), not fixed in ``estimator_options``, and its name no
swept task option and no other column of the tables (checked by :func:`benchmark.studies.tables.check_columns`).

How it is run: :mod:`benchmark.studies.run`; its tables: :mod:`benchmark.studies.tables`; its claims and figures:
:mod:`benchmark.studies.claims` and :mod:`benchmark.studies.figures`. This module imports none of them.

Why one module of about 570 lines: it is the declaration's checks, every field of a study, a panel, a claim and a rule,
each with a one-line error naming the file and the field; they share one reader of fields (:class:`_Fields`), and the
format they check is the one this docstring shows.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pluggy

from benchmark.common import config as configuration
from benchmark.common.errors import (
    PLUGIN_FAULTS,
    Interrupted,
    PluginError,
    PluginHookError,
    UnknownNameError,
    UsageError,
)
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.contracts.run_config import TRUTHS

PANEL_KINDS = ("line", "scatter")
TABLES = ("rows", "points")
RUN_FIELDS = {
    "gt_chunk_size": "a positive integer",
    "gt_seeds": "a positive integer",
    "threads": "a positive integer",
    "truths": f"a list of ground truths ({', '.join(TRUTHS)})",
    "lds_subsets": "an integer of at least 3",
    "lds_fraction": "a number strictly between 0 and 1",
    "lds_test_points": "a positive integer",
    "pbrf_damping": "a positive number",
}
"""The ``run`` options a study may set (those of :class:`~benchmark.contracts.run_config.RunConfig`), with what each
takes."""


def _run_option_valid(option: str, value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if option == "truths":
        return isinstance(value, list) and bool(value) and all(v in TRUTHS for v in value)
    if option == "lds_fraction":
        return number and 0 < value < 1
    if option == "pbrf_damping":
        return number and value > 0
    return number and isinstance(value, int) and value >= (3 if option == "lds_subsets" else 1)


# -- rules ------------------------------------------------------------------------------------------------------
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "trend": (("x", "y", "direction"), ("where", "by", "min_rho", "table")),
    "greater": (("y", "a", "b"), ("where", "by", "min_fraction", "table")),
    "gap_trend": (("x", "y", "a", "b", "direction"), ("where", "min_rho", "table")),
    "value": (("y", "expect", "tolerance"), ("where", "by", "stat", "table")),
    "fraction": (("y", "op", "threshold"), ("where", "min_fraction", "table")),
}
"""Rule kind -> (required fields, optional fields)."""


def check_rule(rule: dict[str, Any]) -> str | None:
    """What is wrong with a rule declaration, or ``None`` if it is well-formed."""
    kind = rule.get("kind")
    if kind not in RULES:
        return f"unknown rule kind {kind!r} (choices: {', '.join(RULES)})"
    required, optional = RULES[kind]
    for field in required:
        if field not in rule:
            return f"rule {kind!r} needs field {field!r}"
    for field in rule:
        if field != "kind" and field not in required + optional:
            return f"unknown field {field!r} of rule {kind!r} (fields: {', '.join(required + optional)})"
    if "direction" in rule and rule["direction"] not in ("increasing", "decreasing"):
        return f"direction must be increasing or decreasing, not {rule['direction']!r}"
    if "op" in rule and rule["op"] not in ("<", ">"):
        return f"op must be '<' or '>', not {rule['op']!r}"
    if "stat" in rule and rule["stat"] not in ("mean", "min", "max"):
        return f"stat must be mean, min or max, not {rule['stat']!r}"
    if "table" in rule and rule["table"] not in ("rows", "points"):
        return f"table must be rows or points, not {rule['table']!r}"
    for field in ("expect", "tolerance", "threshold", "min_rho", "min_fraction"):
        if field in rule and (isinstance(rule[field], bool) or not isinstance(rule[field], (int, float))):
            return f"{field} must be a number, not {rule[field]!r}"
    for field in ("x", "y"):
        if field in rule and not (isinstance(rule[field], str) and rule[field]):
            return f"{field} must be a column name, not {rule[field]!r}"
    if "by" in rule:
        by = rule["by"]
        if not (isinstance(by, str) or isinstance(by, list) and all(isinstance(b, str) for b in by)):
            return f"by must be a column name or a list of them, not {by!r}"
    for field in ("where", "a", "b"):
        if field in rule and not isinstance(rule[field], dict):
            return f"{field} must be a mapping of column -> value(s), not {rule[field]!r}"
    return None


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
        rule: how :mod:`benchmark.studies.claims` decides it (``kind`` plus the kind's fields).
        restates: ``STUDY/ID`` of the leave-one-out claim this one reads again under another ground truth (which its
            rule names: ``truth: pbrf`` or ``selection: lds``); ``bench report`` puts the two side by side.
    """

    id: str
    section: str
    figure: str
    text: str
    paper: str
    rule: dict[str, Any]
    restates: str | None = None

    @property
    def truth(self) -> str:
        """The ground truth the rule reads: ``lds`` for the ``lds`` selection, else its ``truth`` filter, else
        ``loo``."""
        where = self.rule.get("where", {})
        return "lds" if where.get("selection") == "lds" else str(where.get("truth", "loo"))


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
    estimator_sweep: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)

    def points(self) -> list[dict[str, Any]]:
        """The task options of every sweep point (base options plus one combination of the swept values)."""
        keys = list(self.sweep)
        return [{**self.base, **dict(zip(keys, values))} for values in itertools.product(*self.sweep.values())]

    def variants(self, estimators: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Per swept estimator (of ``estimators``, default all), the settings each run evaluates it with: every
        combination of its swept values, in the declared order."""
        return {
            name: [dict(zip(fields, values)) for values in itertools.product(*fields.values())]
            for name, fields in self.estimator_sweep.items()
            if estimators is None or name in estimators
        }

    @property
    def estimator_columns(self) -> list[str]:
        """The swept estimator fields, each a column of the tables, in order of first declaration."""
        return list(dict.fromkeys(field for fields in self.estimator_sweep.values() for field in fields))

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
        if not values or not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise fields.error(f"{name}.{column}", f"expected a value or a list of values, got {wanted!r}")
    return dict(value)


def _claim(path: Path, where: str, data: Any) -> Claim:
    fields = _Fields(path, where, data)
    fields.unknown(("id", "section", "figure", "text", "paper", "rule", "restates"))
    rule = fields.get("rule", dict, required=True)
    problem = check_rule(rule)
    if problem:
        raise fields.error("rule", problem)
    for column in ("where", "a", "b"):
        if column in rule:
            _filter(_Fields(path, f"{where}.rule", rule), column)
    return Claim(
        id=fields.text("id"),
        section=str(fields.get("section", (str, int, float))),
        figure=fields.text("figure"),
        text=fields.text("text"),
        paper=str(fields.get("paper", (str, int, float))),
        rule=dict(rule),
        restates=_restates(fields),
    )


def _restates(fields: _Fields) -> str | None:
    value = fields.get("restates", str, None)
    if value is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", value):
        raise fields.error("restates", f"expected STUDY/CLAIM-ID, got {value!r}")
    return value


def _panel(path: Path, where: str, data: Any) -> Panel:
    fields = _Fields(path, where, data)
    fields.unknown(
        (
            "name",
            "title",
            "figure",
            "kind",
            "x",
            "y",
            "series",
            "facet",
            "where",
            "table",
            "xscale",
            "yscale",
            "hline",
            "caption",
            "claims",
        )
    )
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
    return Panel(
        name=name,
        title=fields.text("title"),
        figure=fields.text("figure", ""),
        kind=kind,
        x=fields.text("x"),
        y=fields.text("y"),
        series=list(series),
        facet=fields.get("facet", str, None),
        where=_filter(fields, "where"),
        table=table,
        xscale=scales["xscale"],
        yscale=scales["yscale"],
        hline=fields.get("hline", (int, float), None),
        caption=fields.text("caption", ""),
        claims=claims,
    )


def parse_study(path: Path, data: Any) -> Study:
    """Check a study declaration (``data`` read from ``path``) and return it; :class:`UsageError` naming the file and
    the field otherwise."""
    fields = _Fields(path, "", data)
    fields.unknown(
        (
            "name",
            "title",
            "paper",
            "description",
            "task",
            "base",
            "sweep",
            "seeds",
            "estimators",
            "estimator_options",
            "estimator_sweep",
            "selections",
            "run",
            "panels",
        )
    )
    name = fields.text("name")
    if name != path.stem:
        raise fields.error("name", f"{name!r} differs from the file name {path.stem!r}")
    sweep = fields.get("sweep", dict, {} if "estimator_sweep" in data else ...)
    if not sweep and not fields.get("estimator_sweep", dict, {}):
        raise fields.error("sweep", "must sweep at least one task option (or estimator_sweep an estimator's field)")
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
    estimators = fields.names("estimators")
    estimator_sweep = _estimator_sweep(fields, estimators, estimator_options, sweep)
    run = fields.get("run", dict, {})
    for option, value in run.items():
        if option not in RUN_FIELDS:
            raise fields.error(f"run.{option}", f"unknown run option (choices: {', '.join(RUN_FIELDS)})")
        if not _run_option_valid(option, value):
            raise fields.error(f"run.{option}", f"expected {RUN_FIELDS[option]}, got {value!r}")
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
                raise UsageError(
                    f"{path}: field 'panels[{panels.index(panel)}].claims': claim id {claim.id!r} is used twice"
                )
            ids.append(claim.id)
    base = fields.get("base", dict, {})
    overlap = sorted(set(base) & set(sweep))
    if overlap:
        raise fields.error("base", f"{overlap[0]!r} is also swept")
    return Study(
        name=name,
        title=fields.text("title"),
        paper=fields.text("paper", ""),
        description=fields.text("description", ""),
        path=path,
        task=fields.text("task"),
        base=dict(base),
        sweep=dict(sweep),
        seeds=list(seeds),
        estimators=estimators,
        estimator_options={k: dict(v) for k, v in estimator_options.items()},
        selections=fields.names("selections", ["top"]),
        run=dict(run),
        panels=panels,
        estimator_sweep=estimator_sweep,
    )


def _estimator_sweep(
    fields: _Fields, estimators: list[str], options: dict[str, Any], sweep: dict[str, Any]
) -> dict[str, dict[str, list[Any]]]:
    """The checked ``estimator_sweep`` (what needs no registry; :func:`check_estimator_sweep` checks the rest)."""
    declared = fields.get("estimator_sweep", dict, {})
    out: dict[str, dict[str, list[Any]]] = {}
    for estimator, swept in declared.items():
        where = f"estimator_sweep.{estimator}"
        if estimator not in estimators:
            raise fields.error(where, f"estimator {estimator!r} is not in 'estimators' ({', '.join(estimators)})")
        if not isinstance(swept, dict) or not swept:
            raise fields.error(where, f"expected a mapping of its fields to lists of values, got {swept!r}")
        for field, values in swept.items():
            if not isinstance(values, list) or not values:
                raise fields.error(f"{where}.{field}", f"expected a non-empty list of values, got {values!r}")
            if not all(isinstance(v, (str, int, float, bool)) for v in values):
                raise fields.error(f"{where}.{field}", f"expected numbers, strings or booleans, got {values!r}")
            if len({repr(v) for v in values}) < len(values):
                raise fields.error(f"{where}.{field}", f"a value is listed twice in {values!r}")
            if field in (options.get(estimator) or {}):
                raise fields.error(f"{where}.{field}", f"also fixed in 'estimator_options.{estimator}'")
            if field in sweep:
                raise fields.error(f"{where}.{field}", f"its column {field!r} is a swept task option too")
        out[str(estimator)] = {str(field): list(values) for field, values in swept.items()}
    return out


def check_estimator_sweep(study: Study, registry: Registry, estimators: Sequence[str] | None = None) -> None:
    """Every swept field of ``study``'s ``estimator_sweep`` (of the ``estimators`` run, default all) is a Config field
    of its (registered) estimator, and each setting is a valid config of it (over its ``estimator_options``);
    :class:`UsageError` naming the file and the field otherwise."""
    for estimator, swept in study.estimator_sweep.items():
        if estimators is not None and estimator not in estimators:
            continue
        config = registry.estimator(estimator).Config
        names = [f.name for f in dataclasses.fields(config)]
        for field in swept:
            if field not in names:
                unknown = UnknownNameError(f"Config field of estimator {estimator!r}", field, names)
                raise UsageError(f"{study.path}: field 'estimator_sweep.{estimator}.{field}': {unknown}")
        for variant in study.variants([estimator])[estimator]:
            try:
                configuration.build(config, {**study.estimator_options.get(estimator, {}), **variant}, estimator)
            except UsageError as error:
                raise UsageError(f"{study.path}: field 'estimator_sweep.{estimator}': {error}") from None


def load_study(path: str | Path) -> Study:
    """Read and check the study declaration at ``path``."""
    path = Path(path)
    return parse_study(path, configuration.load_yaml(path))


# -- where the declarations are -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeclaredStudy:
    """A study declaration a plugin ships (``bench_studies``) and the plugin that ships it."""

    path: Path
    plugin: str


def _declarations(path: Path) -> list[Path]:
    """The ``.yaml`` files ``path`` names: itself, or those directly in it where it is a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such study declaration or directory: {path}")
    return sorted(path.glob("*.yaml")) if path.is_dir() else [path]


def declared_studies(pm: pluggy.PluginManager | None = None) -> dict[str, DeclaredStudy]:
    """Every study the plugins ship (hook ``bench_studies``), by name, in plugin registration order.

    Args:
        pm: the plugin manager of the command (default: one with the built-in and installed plugins).

    Raises:
        PluginError: a hook returned something other than paths, or two plugins ship a study of the same name.
    """
    if pm is None:
        pm = plugin_manager()
    found: dict[str, DeclaredStudy] = {}
    for impl in pm.hook.bench_studies.get_hookimpls():  # in registration order
        try:
            returned: Any = impl.function()
            provided = list(returned or [])
        except Interrupted:
            raise
        except PLUGIN_FAULTS as error:
            raise PluginHookError(impl.plugin_name, "bench_studies", error) from error
        for item in provided:
            if not isinstance(item, (str, Path)) and not hasattr(item, "__fspath__"):
                raise PluginError(f'plugin "{impl.plugin_name}": bench_studies returned {item!r}, not a path')
            try:
                paths = _declarations(Path(item))
            except FileNotFoundError as error:
                raise PluginError(f'plugin "{impl.plugin_name}": bench_studies: {error}') from None
            for path in paths:
                if path.stem in found and found[path.stem].path != path:
                    raise PluginError(
                        f'study {path.stem!r} is shipped by both plugin "{found[path.stem].plugin}" and '
                        f'"{impl.plugin_name}"'
                    )
                found[path.stem] = DeclaredStudy(path, impl.plugin_name)
    return found


def available(directory: Path | None = None, pm: pluggy.PluginManager | None = None) -> dict[str, Path]:
    """The declared studies by name: the ``.yaml`` files under ``directory`` if given, else every study the plugins
    ship (:func:`declared_studies`)."""
    if directory is not None:
        return {p.stem: p for p in sorted(Path(directory).glob("*.yaml"))}
    return {name: declared.path for name, declared in declared_studies(pm).items()}


def find_study(name: str, directory: Path | None = None, pm: pluggy.PluginManager | None = None) -> Study:
    """The study called ``name`` (see :func:`available`) or at the path ``name`` (a ``.yaml`` file)."""
    if name.endswith((".yaml", ".yml")):
        return load_study(name)
    studies = available(directory, pm)
    if name not in studies:
        raise UnknownNameError("study", name, studies)
    return load_study(studies[name])
