"""The task contract: a task builds a trained :class:`~benchmark.numerics.problem.Problem` and states its protocol."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from benchmark.numerics import training
from benchmark.numerics.recipes import Polish, Recipe
from benchmark.numerics.trajectory import TrainingRun

if TYPE_CHECKING:
    from torch import Tensor

    from benchmark.common.cache import Cache
    from benchmark.numerics.problem import Problem


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a task is evaluated.

    Attributes:
        test_point: which test point: ``"max-loss"``, ``"pNN"`` (the NN-th percentile of test losses) or an index.
        eval_size: how many training points each selection scores (the paper's top-k).
        retrain: the leave-one-out re-training recipe, started from the optimum.
        damping: the damping ``lambda`` the protocol evaluates influence at, ``(H + lambda I)^-1`` (e.g. 0.01 for the
            vision tasks, as Koh & Liang), or ``None`` where the protocol states none. ``bench run`` gives it to every
            estimator that declares a damping (:attr:`benchmark.Estimator.damping_field`) unless the run sets that
            estimator's damping itself (``--set NAME.damping=...`` or a YAML section); ``None`` leaves each
            estimator's own default. The resolved value is in every record's hyperparameters.
    """

    test_point: str | int
    eval_size: int
    retrain: Recipe
    damping: float | None = None


@dataclasses.dataclass(frozen=True)
class ReferenceRow:
    """A setting for which the paper reports a figure, so a leaderboard can list it as run or not run.

    Attributes:
        label: how the paper names the setting, e.g. ``"lenet, test point A, with weight decay"``.
        options: the task config values that make a run of this setting (other fields, e.g. the preset, may vary).
        paper: the paper's figures, e.g. ``{"pearson": 0.83, "spearman": 0.51}``.
        command: the command that runs it at the paper's size.
    """

    label: str
    options: dict[str, Any]
    paper: dict[str, float]
    command: str


@dataclasses.dataclass
class BuildContext:
    """What the harness gives a task to build its problem."""

    device: str
    seed: int
    cache: Cache
    progress: bool = True


class Task(abc.ABC):
    """Base class of every task.

    Subclasses set :attr:`name`, :attr:`version` (bumped whenever the protocol or the data change, since cached
    optima and ground truth are keyed on it) and :attr:`Config` (a dataclass with defaults; ``--set NAME.FIELD=V``).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type]
    protocol_fields: ClassVar[tuple[str, ...]] = ()
    """Config fields that change only the evaluation, not the trained problem (left out of :meth:`problem_key`)."""
    keyed_when_set: ClassVar[tuple[str, ...]] = ()
    """Config fields that join :meth:`problem_key` only where they differ from their default: fields added after
    optima and ground truth had been cached under keys without them, so that a run at the default keeps its cache."""
    cpu_threads: ClassVar[int | None] = None
    """Torch intra-op threads to use on a CPU (``None``: torch's default); ``bench run --threads`` overrides it."""
    parameter_change: ClassVar[bool] = True
    """Whether runs score predicted against re-trained parameter-change norms (paper Figs. 1a,b and 2c). It costs one
    iHVP per selected training point and estimator, affordable for small models only; large-model tasks set it off."""

    def __init__(self, config: Any | None = None):
        self.config = self.Config() if config is None else config

    @abc.abstractmethod
    def build(self, context: BuildContext) -> Problem:
        """Load the data and return the problem at its trained optimum (training it, or loading it from the cache)."""

    @abc.abstractmethod
    def protocol(self) -> Protocol:
        """The evaluation protocol for this configuration."""

    def trained(
        self,
        problem: Problem,
        recipe: Recipe | Polish | Sequence[Recipe | Polish],
        context: BuildContext,
        key: dict[str, Any] | None = None,
        checkpoint_key: dict[str, Any] | None = None,
    ) -> Problem:
        """``problem`` at its optimum: trained from its parameters with ``recipe`` (or with several phases one after
        the other, e.g. a learning-rate schedule and a final :class:`Polish`), or loaded from the cache under ``key``
        (default :meth:`problem_key`; a task that trains in stages caches each stage under its own key).

        A :class:`Polish` phase checkpoints its iterate under ``checkpoint_key`` (default ``key``) with the phase's
        index. A task whose ``key`` holds the polish's stopping rule (``max_steps``, ``gradient_tol``) passes a
        ``checkpoint_key`` without it, made of what the iterates do depend on (the optimum it starts from, the
        L-BFGS memory): then a run with a larger ``max_steps`` resumes from a shorter run's last checkpoint instead
        of starting over."""
        phases = [recipe] if isinstance(recipe, (Recipe, Polish)) else list(recipe)

        key = self.problem_key(context.seed) if key is None else key
        checkpoints = key if checkpoint_key is None else checkpoint_key

        def train_phases() -> dict[str, Tensor]:
            current = problem
            for index, phase in enumerate(phases):
                if isinstance(phase, Polish):  # checkpointed: a long polish resumes after an interruption
                    theta = training.polish(
                        current, phase, context.progress, (context.cache, {**checkpoints, "phase": index})
                    )
                else:
                    theta = self.train_from(current, phase, context.progress)
                current = dataclasses.replace(current, params=current.unflatten(theta))
            return {"theta": current.theta}

        optimum = context.cache.tensors("optima", key, train_phases)["theta"].to(problem.theta)
        sgd = [phase for phase in phases if isinstance(phase, Recipe)]
        initialize = self.initial_parameters if self.overrides("initial_parameters") else None
        # a stage of polish alone keeps the run of the stage before it, whose SGD steps are the trajectory
        descend = self.descend if self.overrides("descend") else training.descend
        run = (
            TrainingRun(problem, sgd, context.cache, key, initialize, context.seed, None, descend)
            if sgd
            else problem.training_run
        )
        if run is not None:
            run = run.with_optimum(optimum)
        return dataclasses.replace(
            problem,
            params=problem.unflatten(optimum),
            curvature_cache=(context.cache, key),
            training_run=run,
        )

    def initial_parameters(self, seed: int) -> Tensor:
        """Optional: the flat parameters ``theta`` (in :attr:`benchmark.Problem.theta`'s order) this task initialises
        its model with for ``seed``, what :meth:`build` trains from.

        With it, :meth:`trained` can train an ensemble like the optimum (:meth:`benchmark.Problem.ensemble`, what TRAK
        averages over), each member from ``initial_parameters`` of its own seed; a task without it has no ensemble, and
        estimators that ask for one record the reason as their failure."""
        raise NotImplementedError(f"task {self.name!r} states no initialisation for other seeds")

    def train_from(self, problem: Problem, recipe: Recipe, progress: bool = False) -> Tensor:
        """``theta`` after training ``problem`` from its parameters with ``recipe`` (one SGD phase of :meth:`trained`;
        a :class:`Polish` phase runs :func:`benchmark.numerics.training.polish`):
        :func:`benchmark.numerics.training.train` unless a task has a faster trainer for its models."""
        return training.train(problem, recipe, progress)

    # -- optional speed-ups: a task may override these; the harness uses an override where it has one ---------------
    def descend(
        self,
        problem: Problem,
        thetas: Tensor,
        weights: Tensor,
        recipe: Recipe,
        progress: bool = False,
        description: str = "training",
    ) -> Tensor:
        """Optional: re-train ``K`` models of ``problem`` at once, a faster drop-in for
        :func:`benchmark.numerics.training.descend` (same arguments, same result to rounding: ``thetas`` ``[K, P]`` are
        the starting parameters, ``weights`` ``[K, n_train]`` the weight of each training example per model, 0 removing
        it; returns the ``[K, P]`` parameters after ``recipe``).

        ``bench study`` re-trains the leave-one-out models of a task that overrides it through it (with the local
        executor; :meth:`overrides`), e.g. Iris's hand-written backpropagation; ``bench run`` always uses
        :func:`benchmark.numerics.training.descend`. The default is :func:`benchmark.numerics.training.descend` itself.
        """
        return training.descend(problem, thetas, weights, recipe, progress, description)

    @classmethod
    def train_many(cls, tasks: Sequence[Task], seeds: Sequence[int], context: BuildContext) -> int | None:
        """Optional: train the optima of many ``(task, seed)`` pairs (``tasks[i]`` with ``seeds[i]``, configurations
        of this task class) into ``context.cache`` at once, each equal to the one :meth:`build` would train alone and
        stored under the same key (so :meth:`build` then loads it); an optimum already cached is not trained again.

        ``bench study`` calls it once before its runs when a task overrides it (:meth:`overrides`).

        Returns:
            How many optima were trained (the others were cached already); the default trains none and returns
            ``None``: each run's :meth:`build` trains its own optimum.
        """
        return None

    @classmethod
    def overrides(cls, method: str) -> bool:
        """Whether this task class overrides the optional method ``method`` of :class:`Task` (``"descend"``,
        ``"train_many"`` or ``"initial_parameters"``): the harness uses a task's own speed-up only where it has one."""
        if not callable(getattr(Task, method, None)):
            raise AttributeError(f"Task has no method {method!r}")
        for klass in cls.__mro__:
            if method in vars(klass):
                return klass is not Task
        return False

    @classmethod
    def models(cls) -> dict[str, int]:
        """The architectures this task can train, by name, with their parameter counts (``bench list --models``)."""
        return {}

    eigenvalue_iterations: ClassVar[int] = 50
    """Power-iteration steps (full-data Hessian-vector products) for the top-eigenvalue diagnostic of large models."""

    def diagnostics(self, problem: Problem) -> dict[str, Any]:
        """Task-specific checks of the trained problem, recorded under ``diagnostics.task`` (default: none)."""
        return {}

    @classmethod
    def reference_rows(cls) -> list[ReferenceRow]:
        """The paper's settings for this task (its leaderboard lists those without results as not run)."""
        return []

    def paper_reference(self, estimator: str, selection: str) -> dict[str, Any] | None:
        """The paper's figure for this configuration, e.g. ``{"spearman": 0.97}``, or ``None`` where it has none;
        a figure another system publishes names it under ``source`` (``{"spearman": 0.8, "source": "dattri"}``), and
        one that holds for particular hyperparameters only states them under ``when`` (``{"models": 50}``: the run
        gives it only to an evaluation with those values). ``selection`` is ``lds`` for a linear-datamodeling
        record."""
        return None

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, as recorded in results."""
        return dataclasses.asdict(self.config)

    def problem_key(self, seed: int) -> dict[str, Any]:
        """Everything that determines the trained problem: the key of its cached optimum and ground truth."""
        defaults = {f.name: f.default for f in dataclasses.fields(self.config) if f.name in self.keyed_when_set}
        config = {
            k: v
            for k, v in self.describe().items()
            if k not in self.protocol_fields and not (k in defaults and v == defaults[k])
        }
        return {"task": self.name, "version": self.version, "seed": seed, "config": config}
