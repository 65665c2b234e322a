"""``bench list``: the registered tasks and estimators with their plugins; ``--options``: every config field, its
default and its meaning (from the ``Attributes:`` section of the config's docstring); ``--models``: each task's
models and their parameter counts."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Mapping
from typing import Any

import pluggy

from benchmark.contracts.plugins import Registered, Registry
from benchmark.contracts.run_config import TRUTH_SUMMARIES

HELP = "list tasks and estimators with their plugins"


def add_arguments(parser: argparse.ArgumentParser, pm: pluggy.PluginManager) -> None:
    """The options of ``bench list``."""
    parser.add_argument("--options", action="store_true", help="also show every config field and its default")
    parser.add_argument("--models", action="store_true", help="also show each task's models and parameter counts")


def summary(cls: type) -> str:
    """The first paragraph of ``cls``'s docstring, on one line (``bench list``)."""
    text = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(text.split("\n\n")[0].split())


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> description from the ``Attributes:`` sections (Google style) of the docstrings of ``cls`` and
    its base classes, one line each (``bench list --options``)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if "__doc__" in vars(base):
            docs.update(_attributes_section(base.__doc__ or ""))
    return docs


def _attributes_section(docstring: str) -> dict[str, str]:
    lines = inspect.cleandoc(docstring).splitlines()
    docs: dict[str, str] = {}
    inside, indent, current = False, None, None  # current: the names the description being read belongs to
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:  # the next section or paragraph
            break
        match = re.match(r"(\w+(?:, *\w+)*)(?: \([^)]*\))?: (.*)", line.strip())
        if (indent is None or width == indent) and match:  # "name: text" or "a, b, c: text shared by all"
            indent, current = width, [name.strip() for name in match.group(1).split(",")]
            docs.update({name: match.group(2).strip() for name in current})
        elif current is not None and indent is not None and width > indent:
            docs.update({name: docs[name] + " " + line.strip() for name in current})
    return docs


def _protocol_dampings(registry: Registry) -> dict[str, float]:
    """The damping each task's protocol states at its default config
    (:attr:`benchmark.contracts.task.Protocol.damping`), for ``bench list --options``; a task whose protocol cannot be
    made without data is left out of this listing."""
    dampings = {}
    for name, entry in sorted(registry.tasks.items()):
        try:
            damping = entry.cls().protocol().damping
        except Exception:  # noqa: BLE001 - a listing; `bench run` reports a task's faults as one line
            continue
        if damping is not None:
            dampings[name] = damping
    return dampings


def command(args: argparse.Namespace, registry: Registry, pm: pluggy.PluginManager) -> int:
    """``bench list``."""
    dampings = _protocol_dampings(registry) if args.options else {}
    protocol_note = (
        (
            "a task's protocol sets it unless --set or a YAML section does ("
            + ", ".join(f"{task}: {value:g}" for task, value in dampings.items())
            + "; other tasks: this default)"
        )
        if dampings
        else ""
    )
    sections: list[tuple[str, Mapping[str, Registered[Any]]]] = [
        ("tasks", registry.tasks),
        ("estimators", registry.estimators),
    ]
    for kind, entries in sections:
        print(f"{kind}:")
        for name, entry in sorted(entries.items()):
            print(f"  {name:<14} [{entry.plugin}] {summary(entry.cls)}")
            if args.models and kind == "tasks":
                for model, count in entry.cls.models().items():
                    print(f"      {name} model {model:<10} {count:>12,} parameters")
            if args.options:
                docs = attribute_docs(entry.cls.Config)
                for field in dataclasses.fields(entry.cls.Config):
                    default = field.default
                    if field.default_factory is not dataclasses.MISSING:
                        default = field.default_factory()
                    meaning = docs.get(field.name)
                    print(f"      {name}.{field.name} = {default!r}" + (f": {meaning}" if meaning else ""))
                    if protocol_note and field.name == getattr(entry.cls, "damping_field", None):
                        print(f"        ({name}.{field.name}: {protocol_note})")
    print("ground truths (--truth):")
    for name, meaning in TRUTH_SUMMARIES.items():
        print(f"  {name:<14} {meaning}")
    return 0
