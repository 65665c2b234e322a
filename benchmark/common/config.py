"""Run configuration: YAML files, ``--set NAMESPACE.FIELD=VALUE`` overrides, and typed hyperparameter dataclasses.

A YAML config holds run options at the top level (``task``, ``estimators``, ``seed``, ``device``, ...) and one
mapping per task or estimator name with its fields::

    task: iris
    estimators: [exact, lissa]
    iris: {depth: 2, weight_decay: 0.0}
    lissa: {scale: 50, depth: 2000}

``--set`` overrides a YAML value; an explicit CLI flag overrides both.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from benchmark.common.errors import UnknownNameError, UsageError


class _Loader(yaml.SafeLoader):
    """The safe loader, reading ``1e-3`` as a float as YAML 1.2 does (PyYAML's YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats; constructs plain data only, never objects."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config with the safe loader; malformed files raise :class:`UsageError` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise UsageError(
            f"config file {str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
            f"offset {error.start}); save it as UTF-8"
        ) from None
    try:
        data = safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: malformed YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: malformed YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config file must be a mapping of options, not {type(data).__name__}")
    return data


def split_names(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated command-line list (``--estimator``, ``--selection``)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``NAMESPACE.FIELD=VALUE`` strings (values read as YAML scalars) into nested dicts."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        namespace, dot, field = name.strip().partition(".")
        if not sep or not dot or not namespace or not field:
            raise UsageError(f"bad --set {item!r}: expected NAME.FIELD=VALUE, e.g. lissa.scale=50")
        try:
            value = safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out.setdefault(namespace, {})[field] = value
    return out


def _matches(kind: Any, value: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _coerce(where: str, value: Any, annotation: Any, choices: tuple[Any, ...] | None) -> Any:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = typing.get_args(annotation) if union else (annotation,)
    for kind in kinds:
        if _matches(kind, value):
            value = float(value) if kind is float else value
            break
    else:
        expected = " or ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in kinds)
        raise UsageError(f"bad value for {where}: {value!r} (expected {expected})")
    if choices is not None and value not in choices:
        raise UnknownNameError(f"value for {where}", value, [str(c) for c in choices])
    return value


def build(config_class: type, values: dict[str, Any] | None, namespace: str) -> Any:
    """Instantiate a config dataclass from ``values``, checking names, types and choices.

    A field may declare ``metadata={"choices": (...)}``; ``__post_init__`` may raise ``ValueError`` for range checks,
    which is reported as a :class:`UsageError` naming ``namespace``.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(config_class)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            raise UnknownNameError(f"option of {namespace!r}", name, fields)
        kwargs[name] = _coerce(f"{namespace}.{name}", value, hints[name], fields[name].metadata.get("choices"))
    try:
        return config_class(**kwargs)
    except ValueError as error:
        raise UsageError(f"bad value for {namespace}: {error}") from None


def positive(**values: float) -> None:
    """Raise ``ValueError`` naming the first of ``values`` that is not > 0 (for ``__post_init__`` checks)."""
    for name, value in values.items():
        if value is None or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def non_negative(**values: float) -> None:
    """Raise ``ValueError`` naming the first of ``values`` that is < 0."""
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
