"""Plugin loading: built-ins, the ``bench`` entry-point group, ``-p module`` and ``-p no:NAME``.

Order: names blocked with ``-p no:NAME`` first; then the built-in plugins (:data:`BUILTIN_PLUGINS`), then third-party
plugins from the ``bench`` entry-point group (unless ``$BENCH_DISABLE_PLUGIN_AUTOLOAD`` is set), then modules named
with ``-p``. Every plugin is registered under its short name, so ``-p no:lissa`` disables a built-in and a
third-party plugin alike. ``check_pending()`` then rejects any hook implementation without a matching spec.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable
from typing import Any

import pluggy

from benchmark import hookspecs
from benchmark.errors import PluginError, UnknownNameError
from benchmark.estimator import Estimator
from benchmark.task import Task

ENTRY_POINT_GROUP = "bench"
AUTOLOAD_ENV = "BENCH_DISABLE_PLUGIN_AUTOLOAD"

BUILTIN_PLUGINS: dict[str, str] = {
    "iris": "tasks.iris",
    "vision": "tasks.vision",
    "imagenet": "tasks.imagenet",
    "exact": "estimators.exact",
    "cg": "estimators.cg",
    "lissa": "estimators.lissa",
    "first-order": "estimators.first_order",
}
"""Short name -> module of every built-in plugin: the one place they are listed."""


def entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    """The installed entry points of the ``bench`` group (tests may monkeypatch this)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _import(name: str, loader: Any) -> Any:
    try:
        return loader()
    except Exception as error:  # any failure inside a plugin's import is that plugin's fault
        raise PluginError(f'Error importing plugin "{name}": {type(error).__name__}: {error}') from None


def plugin_manager(plugin_args: Iterable[str] = ()) -> pluggy.PluginManager:
    """A plugin manager with every plugin loaded.

    Args:
        plugin_args: the values of ``-p`` options: ``module.path`` to load, ``no:NAME`` to block.

    Raises:
        PluginError: a plugin failed to import or implements an unknown hook.
    """
    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(hookspecs)
    plugin_args = list(plugin_args)
    for arg in plugin_args:
        if arg.startswith("no:"):
            pm.set_blocked(arg[3:])
    for name, module in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(_import(name, lambda module=module: importlib.import_module(module)), name=name)
    if not os.environ.get(AUTOLOAD_ENV):
        for ep in entry_points():
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            pm.register(_import(ep.name, ep.load), name=ep.name)
    if any(not arg.startswith("no:") for arg in plugin_args) and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # -p module.path resolves from the working directory, as under `python -m`
    for arg in plugin_args:
        if arg.startswith("no:") or pm.is_blocked(arg) or pm.has_plugin(arg):
            continue
        module = _import(arg, lambda arg=arg: importlib.import_module(arg))
        if not pm.is_registered(module):
            pm.register(module, name=arg)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f'plugin "{pm.get_name(error.plugin)}": {error}') from None
    return pm


@dataclasses.dataclass(frozen=True)
class Registered:
    """A registered class and the plugin that provided it."""

    cls: type
    plugin: str


class Registry:
    """Tasks and estimators by name, collected from the plugins' ``bench_tasks`` and ``bench_estimators`` hooks."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.tasks = self._collect(pm.hook.bench_tasks, Task, "task")
        self.estimators = self._collect(pm.hook.bench_estimators, Estimator, "estimator")

    @staticmethod
    def _collect(hook: pluggy.HookCaller, base: type, kind: str) -> dict[str, Registered]:
        found: dict[str, Registered] = {}
        for impl in hook.get_hookimpls():  # in registration order
            for cls in impl.function() or []:
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise PluginError(f'plugin "{impl.plugin_name}" returned {cls!r}, not a {base.__name__} subclass')
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f'plugin "{impl.plugin_name}": {cls.__name__} has no name')
                if name in found:
                    raise PluginError(
                        f'{kind} {name!r} is provided by both plugin "{found[name].plugin}" and "{impl.plugin_name}"'
                    )
                found[name] = Registered(cls, impl.plugin_name)
        return found

    def task(self, name: str) -> type[Task]:
        """The task class called ``name``; :class:`UnknownNameError` with a suggestion otherwise."""
        if name not in self.tasks:
            raise UnknownNameError("task", name, self.tasks)
        return self.tasks[name].cls

    def estimator(self, name: str) -> type[Estimator]:
        """The estimator class called ``name``; :class:`UnknownNameError` with a suggestion otherwise."""
        if name not in self.estimators:
            raise UnknownNameError("estimator", name, self.estimators)
        return self.estimators[name].cls
