"""The task contract: a task builds a trained :class:`~benchmark.problem.Problem` and states its protocol."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import Tensor

    from benchmark.cache import Cache
    from benchmark.problem import Problem


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A gradient-descent recipe, used both to train an optimum and to re-train leave-one-out models from it.

    Attributes:
        steps: number of parameter updates.
        lr: learning rate.
        batch_size: minibatch size; ``None`` for full-batch gradient descent.
        momentum: heavy-ball momentum, as in ``torch.optim.SGD``.
        seed: seed of the minibatch order; leave-one-out models share it (common random numbers).
    """

    steps: int
    lr: float
    batch_size: int | None = None
    momentum: float = 0.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Polish:
    """A final training phase that takes an optimum to a stationary point: full-batch L-BFGS (strong-Wolfe line
    search) on the whole training objective (:func:`benchmark.training.polish`), stopped once its gradient norm is at
    most ``gradient_tol``.

    Minibatch SGD at any constant rate stops where its noise balances the gradient, far from a stationary point;
    influence functions assume one.

    Attributes:
        max_steps: the most L-BFGS iterations (each one or a few full-data gradients).
        gradient_tol: stop once ``||grad J(theta)||`` is at most this.
        history: L-BFGS memory (pairs of steps and gradient changes kept).
    """

    max_steps: int
    gradient_tol: float = 1e-5
    history: int = 20


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

    def trained(self, problem: Problem, recipe: Recipe | Polish | Sequence[Recipe | Polish],
                context: BuildContext, key: dict[str, Any] | None = None) -> Problem:
        """``problem`` at its optimum: trained from its parameters with ``recipe`` (or with several phases one after
        the other, e.g. a learning-rate schedule and a final :class:`Polish`), or loaded from the cache under ``key``
        (default :meth:`problem_key`; a task that trains in stages caches each stage under its own key)."""
        phases = [recipe] if isinstance(recipe, (Recipe, Polish)) else list(recipe)

        key = self.problem_key(context.seed) if key is None else key

        def train_phases() -> dict[str, Tensor]:
            from benchmark.training import polish

            current = problem
            for index, phase in enumerate(phases):
                if isinstance(phase, Polish):  # checkpointed: a long polish resumes after an interruption
                    theta = polish(current, phase, context.progress, (context.cache, {**key, "phase": index}))
                else:
                    theta = self.train_from(current, phase, context.progress)
                current = dataclasses.replace(current, params=current.unflatten(theta))
            return {"theta": current.theta}

        optimum = context.cache.tensors("optima", key, train_phases)["theta"]
        return dataclasses.replace(
            problem, params=problem.unflatten(optimum.to(problem.theta)), curvature_cache=(context.cache, key)
        )

    def train_from(self, problem: Problem, recipe: Recipe, progress: bool = False) -> Tensor:
        """``theta`` after training ``problem`` from its parameters with ``recipe`` (one SGD phase of :meth:`trained`;
        a :class:`Polish` phase runs :func:`benchmark.training.polish`): :func:`benchmark.training.train` unless a
        task has a faster trainer for its models."""
        from benchmark.training import train

        return train(problem, recipe, progress)

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

    def paper_reference(self, estimator: str, selection: str) -> dict[str, float] | None:
        """The paper's figure for this configuration, e.g. ``{"spearman": 0.97}``, or ``None`` where it has none."""
        return None

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, as recorded in results."""
        return dataclasses.asdict(self.config)

    def problem_key(self, seed: int) -> dict[str, Any]:
        """Everything that determines the trained problem: the key of its cached optimum and ground truth."""
        config = {k: v for k, v in self.describe().items() if k not in self.protocol_fields}
        return {"task": self.name, "version": self.version, "seed": seed, "config": config}
