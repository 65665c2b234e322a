"""Plugin loading: built-ins, the ``bench`` entry-point group, ``-p module`` and ``-p no:NAME``.

Order: names blocked with ``-p no:NAME`` first; then the built-in plugins (:data:`BUILTIN_PLUGINS`), then third-party
plugins from the ``bench`` entry-point group (unless ``$BENCH_DISABLE_PLUGIN_AUTOLOAD`` is set), then modules named
with ``-p``. Every plugin is registered under its short name, so ``-p no:lissa`` disables a built-in and a
third-party plugin alike. ``check_pending()`` then rejects any hook implementation without a matching spec, and a
``-p no:NAME`` that names no plugin is an error with a suggestion (it would silently leave the plugin on).

``-p`` takes a module's import path (``examples.diagonal_estimator``, resolved from the working directory too) or the
path of a ``.py`` file (``-p ./my_plugin.py``), registered under the file's stem (``-p no:my_plugin`` blocks it).

A plugin's fault never takes the run down with a traceback: an exception (``SystemExit`` and ``KeyboardInterrupt``
included) on import or in any hook is a :class:`~benchmark.common.errors.PluginError` naming the plugin and the hook.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pluggy

from benchmark.common.errors import PLUGIN_FAULTS, Interrupted, PluginError, PluginHookError, UnknownNameError, describe
from benchmark.contracts import hookspecs
from benchmark.contracts.estimator import Estimator
from benchmark.contracts.task import Task

ENTRY_POINT_GROUP = "bench"
AUTOLOAD_ENV = "BENCH_DISABLE_PLUGIN_AUTOLOAD"

BUILTIN_PLUGINS: dict[str, str] = {
    "iris": "tasks.iris",
    "vision": "tasks.vision",
    "imagenet": "tasks.imagenet",
    "mnist-dattri": "tasks.mnist_dattri",
    "exact": "estimators.exact",
    "cg": "estimators.cg",
    "lissa": "estimators.lissa",
    "first-order": "estimators.first_order",
    "arnoldi": "estimators.arnoldi",
    "datainf": "estimators.datainf",
    "kfac": "estimators.kfac",
    "tracin": "estimators.tracin",
    "grad-cos": "estimators.grad_cos",
    "relatif": "estimators.relatif",
    "trak": "estimators.trak",
}
"""Short name -> module of every built-in plugin: the one place they are listed."""


def entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    """The installed entry points of the ``bench`` group (tests may monkeypatch this)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _import(name: str, loader: Any) -> Any:
    try:
        return loader()
    except Interrupted:
        raise
    except PLUGIN_FAULTS as error:  # any failure inside a plugin's import is that plugin's fault, sys.exit included
        raise PluginError(f'Error importing plugin "{name}": {describe(error)}') from error


def is_file_path(arg: str) -> bool:
    """Whether a ``-p`` argument names a ``.py`` file rather than a module's import path."""
    return arg.endswith(".py") or "/" in arg or os.sep in arg


def _load_file(path: str) -> types.ModuleType:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"no such file {path!r} (-p takes a module path such as examples.diagonal_estimator or a .py file)"
        )
    name = f"bench_plugin_file_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _plugin_name(arg: str) -> str:
    """The name a ``-p`` argument is registered under: a file's stem, else the module path itself."""
    return Path(arg).stem if is_file_path(arg) else arg


def _culprit(error: BaseException, impls: Sequence[pluggy.HookImpl]) -> str | None:
    """The plugin whose hook implementation raised ``error``: the outermost frame of its traceback that runs one."""
    codes = {getattr(impl.function, "__code__", None): impl.plugin_name for impl in impls}
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return codes[tb.tb_frame.f_code]
        tb = tb.tb_next
    return None


def _name_the_plugin(pm: pluggy.PluginManager) -> None:
    """Make an exception from any hook call a :class:`PluginHookError` naming the plugin and the hook."""

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        pass

    def after(
        outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
    ) -> None:
        error = outcome.exception
        if error is None or isinstance(error, (Interrupted, PluginError)):
            return
        culprit = _culprit(error, impls) or " / ".join(impl.plugin_name for impl in impls)
        raise PluginHookError(culprit, hook_name, error) from error

    pm.add_hookcall_monitoring(before, after)


def call_each(hook: pluggy.HookCaller, **kwargs: Any) -> list[PluginHookError]:
    """Call every implementation of ``hook`` (in pluggy's order) even where one fails; returns the failures."""
    failures = []
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(*[kwargs[name] for name in impl.argnames])
        except Interrupted:
            raise
        except PLUGIN_FAULTS as error:
            failures.append(PluginHookError(impl.plugin_name, hook.name, error))
    return failures


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
        name = _plugin_name(arg)
        if arg.startswith("no:") or pm.is_blocked(name) or pm.has_plugin(name):
            continue
        if is_file_path(arg):
            module = _import(arg, lambda arg=arg: _load_file(arg))
        else:
            module = _import(arg, lambda arg=arg: importlib.import_module(arg))
        if not pm.is_registered(module):
            pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f'plugin "{pm.get_name(error.plugin)}": {error}') from None
    known = {*BUILTIN_PLUGINS, *(name for name, plugin in pm.list_name_plugin() if plugin is not None)}
    known |= {ep.name for ep in entry_points()}
    known |= {_plugin_name(arg) for arg in plugin_args if not arg.startswith("no:")}
    for arg in plugin_args:
        if arg.startswith("no:") and arg[3:] not in known:
            raise UnknownNameError("plugin in -p no:NAME", arg[3:], known)
    _name_the_plugin(pm)
    return pm


Kind = TypeVar("Kind")
"""What a registry holds: task classes or estimator classes."""


@dataclasses.dataclass(frozen=True)
class Registered(Generic[Kind]):
    """A registered class and the plugin that provided it."""

    cls: type[Kind]
    plugin: str


class Registry:
    """Tasks and estimators by name, collected from the plugins' ``bench_tasks`` and ``bench_estimators`` hooks."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.tasks: dict[str, Registered[Task]] = self._collect(pm.hook.bench_tasks, Task, "task")
        self.estimators: dict[str, Registered[Estimator]] = self._collect(
            pm.hook.bench_estimators, Estimator, "estimator"
        )

    @staticmethod
    def _collect(hook: pluggy.HookCaller, base: type, kind: str) -> dict[str, Registered[Any]]:
        found: dict[str, Registered[Any]] = {}
        for impl in hook.get_hookimpls():  # in registration order
            try:
                returned: Any = impl.function()
                provided = list(returned or [])
            except Interrupted:
                raise
            except PLUGIN_FAULTS as error:
                raise PluginHookError(impl.plugin_name, hook.name, error) from error
            for cls in provided:
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise PluginError(f'plugin "{impl.plugin_name}" returned {cls!r}, not a {base.__name__} subclass')
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f'plugin "{impl.plugin_name}": {cls.__name__} has no name')
                problems: list[str] = cls.contract_problems() if issubclass(cls, Estimator) else []
                if problems:
                    raise PluginError(f'plugin "{impl.plugin_name}": {"; ".join(problems)}')
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
