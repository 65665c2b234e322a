"""Result records: one JSON file per estimator, selection and run, under ``<results dir>/<task>/``.

The schema is typed: :class:`Record` and the ``TypedDict`` classes it nests are its one source of truth. They
document every field the runner writes (version :data:`SCHEMA_VERSION`), and the validator :func:`validate` derives
what it checks from them (:data:`SCHEMA`: the fields a record must have; :data:`OPTIONAL`: the ``NotRequired``
ones, and every field of a mapping that may be null, checked where present). A record may hold fields the schema
does not declare (a later version's, say): they are not checked, and :func:`undeclared` lists them.

Migration: a record of an older schema version is brought to :data:`SCHEMA_VERSION` by :func:`migrate` (the
functions in :data:`MIGRATIONS`, one per version step) before it is validated, so :func:`load` reads old records
unchanged on disk. Version 1 is the only version so far: every committed record
(``leaderboards/results/*/*.json``) is valid as it is; fields added to the runner since version 1 were added as
``NotRequired``, which is why records written before them stay valid. A change that would invalidate a record
bumps :data:`SCHEMA_VERSION` and adds its step to :data:`MIGRATIONS`.

Why one module of about 500 lines: the typed schema, the validator derived from it and the reading and writing of
records belong together, so that the schema has one source of truth; most of the length is field declarations.
"""

import datetime
import json
import logging
import types
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union

from typing_extensions import NotRequired, TypedDict

from benchmark.common.cache import atomic_write
from benchmark.common.errors import DataError
from benchmark.common.provenance import environment, git_commit  # noqa: F401  (the provenance of records; importable here)

log = logging.getLogger("bench")

SCHEMA_VERSION = 1
"""The version of :class:`Record` that the runner writes (a record's ``schema`` field)."""
Status = Literal["ok", "failed", "skipped"]
STATUSES: tuple[str, ...] = typing.get_args(Status)
"""A record's ``status``: scored; the estimator failed (``failure`` says why); or it does not apply to the problem
(:class:`~benchmark.common.errors.EstimatorSkipped`, ``failure`` holds the reason). Records written before ``skipped``
existed hold ``ok`` or ``failed`` and stay valid."""

DRIFT_DOMINATED = 10.0
"""The ratio ``ground_truth.drift_to_effect`` (the reference drift, the change of the test loss from re-training on
all points, over the median |leave-one-out effect|) above which a run's ground truth is *drift-dominated*: the
re-training recipe moves the model more than removing one point does, so the correlations measure mostly that drift
(an optimum far from stationary, or a recipe too long or too noisy). ``bench run`` warns and the leaderboard marks
the section."""


def is_drift_dominated(ratio: float | None) -> bool:
    """Whether a drift-to-effect ratio exceeds :data:`DRIFT_DOMINATED` (``None`` or NaN, no ratio: no)."""
    return ratio is not None and float(ratio) > DRIFT_DOMINATED


def drift_dominated(ground_truth: dict[str, Any]) -> float | None:
    """The drift-to-effect ratio of a record's ``ground_truth`` where it exceeds :data:`DRIFT_DOMINATED`, else None."""
    ratio = ground_truth.get("drift_to_effect")
    return float(ratio) if ratio is not None and is_drift_dominated(ratio) else None


def test_loss_dtype(ground_truth: dict[str, Any]) -> str:
    """The precision a record's test losses were evaluated in: its ``test_loss_dtype`` (``float64``), else, for records
    written before the field, ``float64`` for the PBRF and the proximal response (solved in float64) and otherwise the
    problem's precision from the cache key (``float32`` on the vision tasks), ``unknown`` where the key lacks it."""
    if "test_loss_dtype" in ground_truth:
        return str(ground_truth["test_loss_dtype"])
    if ground_truth.get("kind") in ("pbrf", "prox"):
        return "float64"
    dtype = (ground_truth.get("cache_key") or {}).get("dtype")
    return str(dtype).removeprefix("torch.") if dtype else "unknown"


def drift_warning(ratio: float) -> str:
    """The one-line warning of a drift-dominated ground truth (see :data:`DRIFT_DOMINATED`)."""
    return (
        f"drift-dominated ground truth: the reference drift is {ratio:.3g}x the median |leave-one-out effect| "
        f"(threshold {DRIFT_DOMINATED:g}): the re-training recipe moves the model more than removing a point "
        "does, so the correlations measure mostly drift, not influence (is the optimum stationary?)"
    )


def new_run_id() -> str:
    """A sortable, unique id: UTC time plus random suffix."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def now() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write(record: dict[str, Any], results_dir: Path) -> Path:
    """Write ``record`` under ``results_dir/<task>/`` and return its path (``<run>-<estimator>-<selection>.json``, with
    ``-pbrf``, ``-prox`` or ``-loo-scratch`` before the suffix for the records of those ground truths, which share
    their run and selection with a leave-one-out one)."""
    truth = (record.get("ground_truth") or {}).get("kind")
    suffix = f"-{truth}" if truth in ("pbrf", "loo-scratch", "prox") else ""
    name = f"{record['run_id']}-{record['estimator']['name']}-{record['selection']['kind']}{suffix}.json"
    path = Path(results_dir) / record["task"]["name"] / name
    atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path


# -- validation ----------------------------------------------------------------------------------------------------
_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))


def _correlation_entry(value: Any) -> str | None:
    """What is wrong with a correlation record (``{"value", "interval", "undefined", ...}``), or ``None``."""
    if not isinstance(value, dict):
        return f"expected a mapping or null, got {type(value).__name__}"
    for field, kinds in (("value", _OPTIONAL_NUMBER), ("undefined", _OPTIONAL_TEXT)):
        problem = _kind(value.get(field), kinds)
        if problem:
            return f"{field}: {problem}"
    if value.get("value") != value.get("value"):
        return "value: NaN (an undefined correlation is null with its reason under 'undefined')"
    interval = value.get("interval")
    if interval is not None and (
        not isinstance(interval, list) or len(interval) != 2 or any(_kind(bound, _NUMBER) for bound in interval)
    ):
        return f"interval: expected two numbers or null, got {interval!r}"
    return None


_CORRELATION = ("correlation",)
_MAPPING = (dict,)


# -- the schema -----------------------------------------------------------------------------------------------------
class Correlation(TypedDict):
    """A correlation (:mod:`benchmark.evaluation.scoring`): its value, or ``None`` with the reason under
    ``undefined``."""

    value: float | None
    undefined: NotRequired[str | None]
    p_value: NotRequired[float | None]
    n: NotRequired[int]
    interval: NotRequired[list[float] | None]
    """95% bootstrap interval over points and ground-truth seeds."""
    agreement: NotRequired[Any]
    """Noise ceilings only: how well the ground-truth seeds agree."""
    seeds: NotRequired[int]
    """Noise ceilings only: the number of ground-truth seeds."""
    subsets: NotRequired[int]
    """Linear datamodeling scores only: the subsets each test point's correlation is taken over."""


class Versions(TypedDict):
    torch: str
    bench: NotRequired[str]
    python: NotRequired[str]


class Device(TypedDict):
    type: str
    name: str | None


class TaskInfo(TypedDict):
    name: str
    config: dict[str, Any]
    """The task's resolved config (:meth:`benchmark.Task.describe`)."""
    version: NotRequired[int]


class TestPoint(TypedDict):
    rule: str
    index: int
    loss: float


class EstimatorInfo(TypedDict):
    name: str
    hyperparameters: dict[str, Any]
    """The estimator's resolved config (protocol damping and ``--set`` values applied)."""
    plugin: NotRequired[str]


class Selection(TypedDict):
    kind: str
    size: int
    description: NotRequired[str]


class ProblemDiagnostics(TypedDict):
    n_train: int
    n_params: int
    weight_decay: float
    gradient_norm: float
    converged: bool
    convergence_tol: float
    top_eigenvalue: float
    bottom_eigenvalue: NotRequired[float | None]
    """Where a dense Hessian was computed."""


class Diagnostics(TypedDict):
    problem: ProblemDiagnostics
    estimator: dict[str, Any]
    """What the estimator reports (iterations, residual, ``converged``, ...)."""
    task: NotRequired[dict[str, Any]]
    """:meth:`benchmark.Task.diagnostics`."""


class RecipeInfo(TypedDict):
    """The re-training :class:`benchmark.Recipe`."""

    steps: int
    lr: float
    batch_size: int | None
    momentum: NotRequired[float]
    seed: NotRequired[int]


class GroundTruthInfo(TypedDict):
    """What the records of a run were scored against: leave-one-out re-training (``kind`` absent or ``loo``), the
    linear datamodeling score (``kind`` ``lds``: ``subsets``, ``fraction``, ``phases``, ``test_points``; no
    reference and no re-training recipe), or the proximal Bregman response (``kind`` ``pbrf``: ``damping``,
    ``solver``, ``worst_gradient_norm``, ``unsolved``; no re-training recipe)."""

    protocol: str
    points: int
    """Leave-one-out: training points re-trained; ``lds``: subset models per seed."""
    reference: NotRequired[str]
    reference_drift: NotRequired[float]
    """The change of the test loss from re-training on all points (mean over ground-truth seeds)."""
    recipe: NotRequired[RecipeInfo]
    kind: NotRequired[Literal["loo", "lds", "pbrf", "loo-scratch", "prox"]]
    damping: NotRequired[float]
    """``pbrf``: the proximity weight of the proximal Bregman response."""
    solver: NotRequired[dict[str, Any]]
    """``pbrf``: the solver's settings (:class:`~benchmark.groundtruth.pbrf.PbrfSolver`)."""
    worst_gradient_norm: NotRequired[float | None]
    """``pbrf``: the largest gradient norm a solve stopped at, relative to its value at the optimum."""
    unsolved: NotRequired[int]
    """``pbrf``: solves that stopped above the tolerance."""
    subsets: NotRequired[int]
    fraction: NotRequired[float]
    design_seed: NotRequired[int]
    phases: NotRequired[list[RecipeInfo]]
    """``lds`` and ``loo-scratch``: the task's training phases each model was trained with from scratch."""
    test_points: NotRequired[int]
    models_per_minute: NotRequired[float | None]
    """``lds``: subset models trained per minute in this run (``None`` where all came from the cache)."""
    seeds: NotRequired[int]
    drift_to_effect: NotRequired[float | None]
    """``|reference_drift|`` over the median |leave-one-out effect| (see :data:`DRIFT_DOMINATED`)."""
    reference_test_loss: NotRequired[float]
    test_loss_dtype: NotRequired[Literal["float64"]]
    """The precision the test losses were evaluated in (:meth:`~benchmark.numerics.problem.Problem.losses_float64`);
    absent in records written before it was added, whose test losses were in the problem's precision."""
    reference_drift_per_seed: NotRequired[list[float]]
    median_abs_effect: NotRequired[float | None]
    cached: NotRequired[int]
    computed: NotRequired[int]
    corrupt_recomputed: NotRequired[int]
    seconds: NotRequired[float]
    chunk_size: NotRequired[int | None]
    executor: NotRequired[str]
    cache_key: NotRequired[dict[str, Any]]


class Timings(TypedDict):
    prepare_s: float | None
    query_s: float | None
    lds_query_s: NotRequired[float | None]
    """The estimator's influence on the linear datamodeling score's test points (batched calls)."""
    models_s: NotRequired[float | None]
    """What producing the extra models an estimator used (checkpoints, an ensemble) cost, also when they were loaded
    from the cache; ``prepare_s`` is then the estimator's own preparation without it."""


class Ceiling(TypedDict):
    """The noise ceiling of each correlation (needs two or more ground-truth seeds)."""

    pearson: NotRequired[Correlation | None]
    spearman: NotRequired[Correlation | None]


class LdsDetails(TypedDict):
    """A linear-datamodeling record's score per test point."""

    test_indices: list[int]
    per_point: list[float | None]
    """Spearman over the subsets at each test point (``None`` where undefined)."""
    undefined_points: dict[str, str]
    """Test index -> why its correlation is undefined (constant responses or predictions)."""


class Metrics(TypedDict):
    pearson: NotRequired[Correlation | None]
    spearman: NotRequired[Correlation | None]
    param_norm_pearson: NotRequired[Correlation | None]
    param_norm_spearman: NotRequired[Correlation | None]
    ihvp_relative_residual: NotRequired[float | None]
    ihvp_residual_undefined: NotRequired[str]
    """Why there is no iHVP residual (an estimator without an iHVP)."""
    ceiling: NotRequired[Ceiling | None]
    lds: NotRequired[LdsDetails | None]
    """Records of selection ``lds``: each test point's score (``spearman`` and ``pearson`` are their means)."""


class Points(TypedDict):
    """The scored training points, in order."""

    train_indices: list[int]
    estimated: list[float]
    retrained: list[float]
    """Mean over the ground-truth seeds."""
    retrained_param_norm: list[float]
    retrained_per_seed: NotRequired[list[list[float]]]
    estimated_param_norm: NotRequired[list[float]]
    """Absent where the parameter change failed or was not computed (the correlation says why)."""


class Paper(TypedDict):
    """The published figure for this setting: the paper's, or another system's where ``source`` names it (e.g.
    dattri's linear datamodeling scores)."""

    pearson: NotRequired[float | None]
    spearman: NotRequired[float | None]
    source: NotRequired[str]


class Record(TypedDict):
    """One result record (schema version :data:`SCHEMA_VERSION`): one estimator on one selection of one run."""

    schema: int
    run_id: str
    date: str
    """ISO 8601, UTC."""
    commit: str | None
    versions: Versions
    device: Device
    task: TaskInfo
    seed: int
    test_point: TestPoint
    estimator: EstimatorInfo
    selection: Selection
    status: Status
    """``skipped``: the estimator does not apply to the problem (e.g. ``exact`` above its ``max_params``)."""
    failure: str | None
    """Why there is no score: the failure or the reason for the skip; ``None`` when ok."""
    diagnostics: Diagnostics
    ground_truth: GroundTruthInfo
    timings: Timings
    command: NotRequired[str | None]
    """The bench command line, or ``None`` when run from Python."""
    dirty: NotRequired[bool | None]
    threads: NotRequired[int]
    metrics: NotRequired[Metrics | None]
    """``None`` for a failed or skipped record."""
    points: NotRequired[Points | None]
    paper: NotRequired[Paper | None]
    """The paper's figure for this setting, where it has one."""


def _is_typeddict(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, dict) and hasattr(kind, "__required_keys__")


def _fields(cls: Any) -> dict[str, tuple[Any, bool]]:
    """``field -> (type, required)`` of a TypedDict, ``NotRequired`` unwrapped."""
    hints = typing.get_type_hints(cls)
    return {name: (hints[name], name in cls.__required_keys__) for name in hints}


def _members(kind: Any) -> tuple[Any, ...]:
    """The members of a union type (``X | None``, ``Union[X, None]``), or ``(kind,)``."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


_PLAIN: dict[Any, tuple[Any, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
    type(None): (type(None),),
}


def _kinds(kind: Any) -> tuple[Any, ...]:
    """What :func:`_kind` checks for a field of type ``kind``: allowed types, allowed literal values, or
    ``("correlation",)`` for a :class:`Correlation` that may be null."""
    members = _members(kind)
    if Correlation in members:
        return _CORRELATION
    out: list[Any] = []
    for member in members:
        origin = typing.get_origin(member) or member
        if origin is Literal:
            out += typing.get_args(member)
        elif member in _PLAIN:
            out += [k for k in _PLAIN[member] if k not in out]
        elif origin in (dict, list):
            out.append(origin)
        elif _is_typeddict(member):
            out.append(dict)
        elif member is Any:
            return ()
        else:
            raise TypeError(f"no check for the schema type {member!r}")
    return tuple(out)


def _specs(cls: Any, prefix: str = "", required: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(schema, optional)`` of a TypedDict: the nested spec of its required fields (a required, non-null TypedDict
    field is a nested dict) and the dotted names of the others (``NotRequired``), checked where present. Under a
    mapping that may be absent or null (``required=False``), every field is checked where present."""
    schema: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for name, (kind, is_required) in _fields(cls).items():
        dotted = prefix + name
        here = required and is_required
        nested = [m for m in _members(kind) if _is_typeddict(m) and m is not Correlation]
        if nested and here and type(None) not in _members(kind):
            schema[name], deeper = _specs(nested[0], dotted + ".", True)
            optional.update(deeper)
            continue
        kinds = _kinds(kind)
        if here:
            schema[name] = kinds
        elif kinds:
            optional[dotted] = kinds
        if nested:
            optional.update(_specs(nested[0], dotted + ".", False)[1])
    if not required:
        optional = {**{prefix + k: v for k, v in _flatten(schema).items()}, **optional}
        schema = {}
    return schema, optional


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kinds in spec.items():
        if isinstance(kinds, dict):
            out.update(_flatten(kinds, prefix + name + "."))
        else:
            out[prefix + name] = kinds
    return out


SCHEMA, OPTIONAL = _specs(Record)
"""Derived from :class:`Record`: ``SCHEMA`` is what a record must have (what the leaderboard reads), a tuple of
allowed types, of allowed values, or ``("correlation",)``, and a dict for a nested mapping; ``OPTIONAL`` holds the
dotted names of the fields a record may leave out (or set to null where the types allow it), checked where
present."""


def undeclared(record: dict[str, Any], cls: Any = Record, prefix: str = "") -> list[str]:
    """The dotted names of the fields of ``record`` that the schema (:class:`Record`) does not declare; free mappings
    (``dict[str, Any]``: configs, hyperparameters, diagnostics) may hold anything."""
    fields = _fields(cls)
    out = []
    for name, value in record.items():
        if name not in fields:
            out.append(prefix + name)
            continue
        nested = [m for m in _members(fields[name][0]) if _is_typeddict(m)]
        if nested and isinstance(value, dict):
            out += undeclared(value, nested[0], prefix + name + ".")
    return out


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``version -> step``: a function that takes a record of schema ``version`` to ``version + 1`` (none so far)."""


def migrate(record: Any) -> Any:
    """``record`` brought to :data:`SCHEMA_VERSION` by the steps of :data:`MIGRATIONS` (unchanged where it already
    is, or where there is no step from its version: :func:`validate` then names the version)."""
    while isinstance(record, dict) and record.get("schema") in MIGRATIONS:
        record = MIGRATIONS[record["schema"]](record)
    return record


def _kind(value: Any, kinds: tuple[Any, ...]) -> str | None:
    """What is wrong with ``value`` for the allowed ``kinds`` (types or literal values), or ``None``."""
    if kinds == _CORRELATION:
        return None if value is None else _correlation_entry(value)
    if all(isinstance(kind, type) for kind in kinds):
        if isinstance(value, bool) and bool not in kinds:  # JSON true is not a number
            ok = False
        else:
            ok = isinstance(value, kinds)
        if ok:
            return None
        names = {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "true or false",
            dict: "a mapping",
            type(None): "null",
        }
        expected = " or ".join(
            dict.fromkeys(names.get(kind, kind.__name__) for kind in kinds if not (kind is int and float in kinds))
        )
        return f"expected {expected}, got {json.dumps(value)[:40]}"
    if value not in kinds:
        return f"expected one of {', '.join(map(repr, kinds))}, got {json.dumps(value)[:40]}"
    return None


def validate(record: Any) -> str | None:
    """The first thing wrong with ``record`` against the schema, as ``"FIELD: problem"``; ``None`` if it is valid."""
    if not isinstance(record, dict):
        return f"top level: expected a mapping (a JSON object), got {type(record).__name__}"
    if record.get("schema") != SCHEMA_VERSION:
        return f"schema: expected {SCHEMA_VERSION}, got {json.dumps(record.get('schema'))[:40]}"

    def check(mapping: dict[str, Any], spec: dict[str, Any], prefix: str) -> str | None:
        for field, kinds in spec.items():
            name = prefix + field
            if field not in mapping:
                return f"{name}: missing"
            value = mapping[field]
            if isinstance(kinds, dict):
                if not isinstance(value, dict):
                    return f"{name}: expected a mapping, got {json.dumps(value)[:40]}"
                problem = check(value, kinds, name + ".")
            else:
                problem = _kind(value, kinds)
                problem = problem and f"{name}: {problem}"
            if problem:
                return problem
        return None

    problem = check(record, SCHEMA, "")
    if problem:
        return problem
    for name, kinds in OPTIONAL.items():
        *parents, field = name.split(".")
        mapping: Any = record
        for parent in parents:
            mapping = mapping.get(parent) if isinstance(mapping, dict) else None
        if isinstance(mapping, dict) and field in mapping:
            problem = _kind(mapping[field], kinds)
            if problem:
                return f"{name}: {problem}"
    return None


def load(results_dir: Path, task: str | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Every valid record under ``results_dir`` (for ``task`` only, if given), migrated to :data:`SCHEMA_VERSION`
    (:func:`migrate`).

    A record that cannot be read or does not match the schema (:func:`validate`) is skipped with a one-line warning
    naming the file and the field, or raises :class:`~benchmark.common.errors.DataError` if ``strict``.
    """
    root = Path(results_dir)
    paths = sorted((root / task).glob("*.json") if task else root.glob("*/*.json"))
    out = []
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problem: str | None = f"unreadable: {getattr(error, 'strerror', None) or error}"
        else:
            record = migrate(record)
            problem = validate(record)
        if problem is None:
            out.append(record)
            continue
        message = f"bad result record {path}: {problem}"
        if strict:
            raise DataError(message + " (without --strict it is skipped)")
        log.warning("%s; skipping it", message)
    return out
