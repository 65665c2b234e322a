"""The estimator contract.

An estimator implements one thing, the inverse-Hessian-vector product (iHVP). The influence of every training point
on a test point is written once, here, from that iHVP; first-order estimators may override :meth:`influence`.

An estimator that is not iHVP-based (gradient cosine, TracIn, TRAK) sets :attr:`Estimator.no_ihvp` to the reason and
overrides :meth:`influence` instead of :meth:`ihvp`; the parameter-change and iHVP-residual diagnostics of its records
then read "n/a" with that reason rather than a meaningless number.

Sign convention (pinned by tests): :meth:`Estimator.influence` returns the predicted **change in the test loss when
the training point is removed**, ``+(1/n) g_test^T H^-1 g_i``, the same quantity the leave-one-out ground truth
measures (``loss_test(theta_-i) - loss_test(theta_ref)``), so that a good estimator correlates positively.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from benchmark.common.errors import EstimatorFailed
from benchmark.numerics.problem import LAYERS, Problem


@dataclasses.dataclass
class NoConfig:
    """Hyperparameters of an estimator that has none."""


class Estimator(abc.ABC):
    """Base class of every influence estimator.

    Subclasses set :attr:`name` (the short name used on the command line), :attr:`Config` (a dataclass of
    hyperparameters with defaults; ``bench run --set NAME.FIELD=VALUE`` sets them), :attr:`damping_field` where the
    iHVP is damped (so that a task's protocol damping reaches it), and implement :meth:`ihvp`.

    ``progress`` asks a long-running estimator to show a progress bar; ``diagnostics`` holds what the last call
    measured of its own convergence (iterations, residuals, spectrum), copied into the result record.

    Lifecycle: ``prepare(problem)`` once per trained model (the expensive, cacheable part, timed as *preparation*),
    then any number of ``influence(test_indices)`` queries (timed as *query*).

    Every output is checked by the harness (type, shape, dtype, finite values): a violation is this estimator's
    failure, recorded with the expected and the actual shape, and the run goes on.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    no_ihvp: ClassVar[str | None] = None
    """``None`` for an iHVP-based estimator; otherwise why it has no iHVP (e.g. ``"gradient similarity, no
    curvature"``): it then overrides :meth:`influence` and not :meth:`ihvp`, and its parameter-change and
    iHVP-residual diagnostics read ``n/a`` with this reason."""

    query_rows: ClassVar[int | None] = 64
    """Test points per :meth:`influence` call when the harness scores many (the linear datamodeling score): a bound on
    the ``[rows, P]`` test gradients and iHVPs a call holds. ``None``: every test point in one call, for an estimator
    that streams over them itself and pays a fixed cost per call (TRAK redraws each model's projection matrix)."""

    damping_field: ClassVar[str | None] = None
    """The name of the :attr:`Config` field that holds the damping ``lambda`` this estimator's iHVP targets,
    ``(H + lambda I)^-1`` (e.g. ``"damping"``), or ``None`` for an estimator without one (``first-order``).

    The declaration is the estimator's part of the protocol contract: a task whose
    :class:`~benchmark.contracts.task.Protocol` states a ``damping`` has ``bench run`` set this field to it, unless the
    run sets the field itself (``--set`` or a YAML section); :attr:`damping` reads it (the dense reference of the iHVP
    residual is solved at it). An estimator that does not take the protocol's settings as they are overrides
    :meth:`protocol_options`. Checked at registration: it must name a field of :attr:`Config`."""

    @classmethod
    def protocol_options(cls, protocol: Any) -> dict[str, Any]:
        """The :attr:`Config` values a task's ``protocol`` (:class:`~benchmark.contracts.task.Protocol`) asks of this
        estimator, applied by ``bench run`` where the run does not set the same field itself.

        Default: ``{damping_field: protocol.damping}`` where both are declared, else nothing. An estimator overrides it
        to decline the protocol's damping (return ``{}``) or to translate it into its own parametrisation."""
        damping = getattr(protocol, "damping", None)
        if cls.damping_field is None or damping is None:
            return {}
        return {cls.damping_field: damping}

    def __init__(self, config: Any | None = None, progress: bool = False):
        self.config = self.Config() if config is None else config
        self.progress = progress
        self.diagnostics: dict[str, Any] = {}
        self.problem: Problem | None = None
        self.models: dict[str, Any] = {}
        """What :meth:`prepare` used beyond the trained model, for cost accounting: ``kind`` (e.g. ``"trajectory"``),
        ``count``, ``seconds`` (what producing them cost, also when they came from the cache), ``from_cache`` and,
        where some came from the cache and some were produced now, ``seconds_now`` (the part of ``seconds`` spent in
        this :meth:`prepare`; default ``seconds``, or 0 when ``from_cache``). The harness records ``seconds`` as the
        ``models_s`` timing and takes ``seconds_now`` out of the estimator's own ``prepare_s``."""

    @property
    def damping(self) -> float:
        """The damping ``lambda`` this estimator adds to ``H``: its iHVP targets ``(H + lambda I)^-1``. The value of the
        :attr:`damping_field` its class declares; 0 for an estimator that declares none."""
        if self.damping_field is None:
            return 0.0
        return float(getattr(self.config, self.damping_field))

    def prepare(self, problem: Problem) -> None:
        """Do the expensive, query-independent work for ``problem`` (default: remember it)."""
        self.problem = problem

    def ihvp(self, vectors: Tensor) -> Tensor:
        """Inverse-Hessian-vector products (every estimator implements it, unless it declares :attr:`no_ihvp`).

        Args:
            vectors: ``Tensor[m, P]``, one right-hand side ``v`` per row, in the problem's dtype.

        Returns:
            ``Tensor[m, P]``: the estimator's approximation of ``(H + damping I)^-1 v`` per row.

        Raises:
            EstimatorFailed: when no trustworthy answer can be produced (divergence, singular system).
        """
        reason = f" ({self.no_ihvp})" if self.no_ihvp else ""
        raise NotImplementedError(f"estimator {self.name!r} has no iHVP{reason}")

    def influence(self, test_indices: Tensor | list[int]) -> Tensor:
        """Predicted change of each test loss when each training point is removed.

        Returns:
            ``Tensor[m, n]``: row ``j``, column ``i`` is ``(1/n) g_test_j^T H^-1 g_i``.
        """
        problem = self._require_problem()
        return self.influence_from_solutions(self.ihvp(problem.test_gradients(test_indices)))

    def influence_from_solutions(self, solutions: Tensor) -> Tensor:
        """``(1/n) G_train s`` for each row ``s`` of ``solutions`` (``Tensor[m, P]`` of ``H^-1 g_test``):
        ``Tensor[m, n]``."""
        problem = self._require_problem()
        return problem.train_gradient_products(solutions) / problem.n_train

    def parameter_change(self, train_indices: Tensor | list[int]) -> Tensor:
        """Predicted parameter change ``theta_-i - theta*`` on removing each training point, ``(1/n) H^-1 g_i``.

        Returns:
            ``Tensor[k, P]``.
        """
        problem = self._require_problem()
        return self.ihvp(problem.train_gradients(train_indices)) / problem.n_train

    @classmethod
    def contract_problems(cls) -> list[str]:
        """What keeps this class from being a usable estimator (empty when it is one); checked at registration."""
        problems = []
        name = vars(cls).get("name", getattr(cls, "name", None))
        if not isinstance(name, str) or not name:
            problems.append(f'{cls.__name__} has no name (set the class attribute name = "...")')
        overrides_ihvp = cls.ihvp is not Estimator.ihvp
        overrides_influence = cls.influence is not Estimator.influence
        if cls.no_ihvp is None and not overrides_ihvp:
            problems.append(
                f"{cls.__name__} implements no ihvp(); an estimator without one sets no_ihvp to the "
                "reason and overrides influence()"
            )
        if cls.no_ihvp is not None and not (isinstance(cls.no_ihvp, str) and cls.no_ihvp):
            problems.append(f"{cls.__name__}.no_ihvp must be a reason (a non-empty string), not {cls.no_ihvp!r}")
        elif cls.no_ihvp is not None and not overrides_influence:
            problems.append(f"{cls.__name__} sets no_ihvp but does not override influence(), which needs an ihvp()")
        if cls.damping_field is not None:
            fields = [f.name for f in dataclasses.fields(cls.Config)] if dataclasses.is_dataclass(cls.Config) else []
            if cls.damping_field not in fields:
                problems.append(
                    f"{cls.__name__}.damping_field {cls.damping_field!r} is not a field of its Config "
                    f"(fields: {', '.join(fields) or 'none'})"
                )
        rows = cls.query_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            problems.append(f"{cls.__name__}.query_rows must be a positive integer or None, not {rows!r}")
        abstract = sorted(getattr(cls, "__abstractmethods__", ()))
        if abstract:
            problems.append(f"{cls.__name__} leaves abstract methods {', '.join(abstract)} unimplemented")
        return problems

    def _require_problem(self) -> Problem:
        if self.problem is None:
            raise RuntimeError(f"estimator {self.name!r} used before prepare()")
        return self.problem


class ScopedEstimator(Estimator):
    """An iHVP estimator whose curvature may be restricted to some layers (``Config.layers``, one of
    :data:`~benchmark.numerics.problem.LAYERS`): with ``last``, ``H`` is taken to be its block on the last module's
    parameters and the iHVP is zero on every other parameter, so only those contribute influence (the last-layer
    influence of Koh & Liang's and later studies; with ``all`` nothing changes).

    Subclasses implement :meth:`scope_ihvp` (and :meth:`prepare_scope` where they prepare) on :attr:`scope`, the
    :meth:`~benchmark.Problem.restricted` problem over the selected parameters, as if it were the whole problem: this
    class restricts the problem, maps vectors in and out (zero outside the scope) and takes the influence's
    training-gradient products on the scope only, so a last-layer run pays for last-layer gradients. Its ``Config``
    needs the field ``layers``.
    """

    def prepare(self, problem: Problem) -> None:
        super().prepare(problem)
        names = problem.layer_parameters(self.config.layers)
        self._columns = None if len(names) == len(problem.params) else problem.columns(names)
        self.scope = problem if self._columns is None else problem.restricted(names)
        self.prepare_scope(self.scope)

    def prepare_scope(self, scope: Problem) -> None:
        """:meth:`Estimator.prepare` on :attr:`scope`: the estimator's expensive, query-independent work (default:
        none)."""

    @abc.abstractmethod
    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        """:meth:`Estimator.ihvp` on :attr:`scope`: ``Tensor[m, P_scope] -> Tensor[m, P_scope]``."""

    def ihvp(self, vectors: Tensor) -> Tensor:
        if self._columns is None:
            return self.scope_ihvp(vectors)
        out = torch.zeros_like(vectors)
        out[:, self._columns] = self.scope_ihvp(vectors[:, self._columns]).to(vectors.dtype)
        return out

    def influence_from_solutions(self, solutions: Tensor) -> Tensor:
        if self._columns is None:
            return super().influence_from_solutions(solutions)
        return self.scope.train_gradient_products(solutions[:, self._columns]) / self.scope.n_train

    @classmethod
    def contract_problems(cls) -> list[str]:
        problems = super().contract_problems()
        fields = [f.name for f in dataclasses.fields(cls.Config)] if dataclasses.is_dataclass(cls.Config) else []
        if "layers" not in fields:
            problems.append(
                f"{cls.__name__} is a ScopedEstimator without a Config field 'layers' "
                f'(layers: str = "all", one of {", ".join(LAYERS)})'
            )
        return problems


def check_finite(name: str, tensor: Tensor) -> Tensor:
    """Raise :class:`~benchmark.common.errors.EstimatorFailed` naming ``name`` unless every entry is finite."""
    if not bool(torch.isfinite(tensor).all()):
        raise EstimatorFailed(f"{name} produced non-finite values")
    return tensor
