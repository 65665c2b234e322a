"""One estimator on the problem: made with the run's hyperparameters, prepared, asked for every training point's
influence on the test point (timed: preparation and query separately), and its outputs checked. A failing estimator
is recorded as failed with its reason and an estimator that does not apply to the problem
(:class:`~benchmark.EstimatorSkipped`) as skipped; neither ends the run. ``bench run`` and the asv suite
(``asv_bench/cases.py``) evaluate through these functions.

Estimator settings: a task's :class:`~benchmark.Protocol` may state a ``damping``; every estimator that declares a
damping (:attr:`~benchmark.Estimator.damping_field`) gets it unless the run sets that field (``--set``, a YAML
section), and the records hold the resolved hyperparameters (see :func:`resolve_hyperparameters`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from typing import Any

import numpy as np
import torch

from benchmark.common import config as configuration
from benchmark.common.errors import (
    PLUGIN_FAULTS,
    EstimatorFailed,
    EstimatorSkipped,
    Interrupted,
    PluginError,
    describe,
)
from benchmark.contracts.estimator import Estimator
from benchmark.contracts.task import Protocol
from benchmark.numerics.curvature import DenseHessian
from benchmark.numerics.problem import Problem

log = logging.getLogger("bench")

DENSE_LIMIT = 1_000
"""Problems with at most this many parameters get a dense float64 Hessian as the iHVP reference; larger ones get it
only when the ``exact`` estimator of the same run computed it anyway (it is shared through the problem)."""


def resolve_hyperparameters(cls: type[Estimator], options: dict[str, Any] | None, protocol: Protocol, name: str) -> Any:
    """The config of estimator ``cls`` for a run: the protocol's settings for it (:meth:`Estimator.protocol_options`,
    e.g. the protocol damping), overridden field by field by the run's own ``options`` (``--set``, YAML), over the
    Config's defaults. A bad value is a one-line :class:`UsageError` naming ``name``."""
    from_protocol = cls.protocol_options(protocol)
    if not isinstance(from_protocol, dict):
        raise PluginError(
            f"estimator {name!r}: protocol_options returned a {type(from_protocol).__name__}, expected a "
            "dict of its Config fields"
        )
    return configuration.build(cls.Config, {**from_protocol, **(options or {})}, name)


def variant_label(name: str, variant: dict[str, Any]) -> str:
    """How a run names one setting of an estimator it evaluates under several (a study's ``estimator_sweep``):
    ``tracin[checkpoints=5]``; the plain ``name`` where ``variant`` is empty."""
    if not variant:
        return name
    return f"{name}[{','.join(f'{field}={value}' for field, value in variant.items())}]"


@dataclasses.dataclass
class Evaluation:
    """What one estimator produced on the problem."""

    estimator: Estimator
    plugin: str
    hyperparameters: dict[str, Any]
    variant: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The hyperparameters that tell this evaluation apart from other settings of the same estimator in the run (a
    study's ``estimator_sweep``; empty where the run holds one setting of it): they make its :attr:`label`."""
    failure: str | None = None
    skipped: bool = False
    """Whether :attr:`failure` is the reason the estimator does not apply (:class:`EstimatorSkipped`), not a fault."""
    scores: np.ndarray | None = None
    param_norms: dict[int, float] = dataclasses.field(default_factory=dict)
    param_failure: str | None = None
    solution: torch.Tensor | None = None
    residual: float | None = None
    timings: dict[str, float | None] = dataclasses.field(default_factory=lambda: {"prepare_s": None, "query_s": None})
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: BaseException | None = None
    """The exception behind :attr:`failure` (an :class:`EstimatorFailed` is a refusal; anything else a fault)."""

    @property
    def label(self) -> str:
        """The estimator's name, with its :attr:`variant` where it has one (:func:`variant_label`): unique in a run,
        it names the evaluation's records."""
        return variant_label(self.estimator.name, self.variant)


def _failure(error: BaseException) -> str:
    if isinstance(error, EstimatorFailed):
        return error.reason
    log.debug("estimator error:\n%s", "".join(traceback.format_exception(error)))
    return describe(error)


def check_output(method: str, value: Any, shape: tuple[int, ...], dtype: torch.dtype, meaning: str) -> torch.Tensor:
    """``value`` if it is a finite ``Tensor`` of ``shape`` and ``dtype``; :class:`EstimatorFailed` naming ``method``,
    the expected and the actual type, shape or dtype otherwise (``meaning`` says what the expected shape holds)."""
    if not isinstance(value, torch.Tensor):
        raise EstimatorFailed(f"{method} returned a {type(value).__name__}, expected a torch.Tensor of shape {shape}")
    if tuple(value.shape) != shape:
        raise EstimatorFailed(f"{method} returned shape {tuple(value.shape)}, expected {shape} ({meaning})")
    if value.dtype != dtype:
        raise EstimatorFailed(f"{method} returned dtype {value.dtype}, expected {dtype} (the problem's dtype)")
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise EstimatorFailed(f"{method} returned values that are not finite ({bad} of {value.numel()})")
    return value


def no_ihvp_reason(estimator: Estimator) -> str:
    """Why an estimator's iHVP diagnostics read n/a (see :attr:`Estimator.no_ihvp`)."""
    return f"n/a: estimator {estimator.name!r} has no iHVP ({estimator.no_ihvp})"


def evaluate_estimator(evaluation: Evaluation, problem: Problem, test_index: int, test_gradient: torch.Tensor) -> None:
    """Prepare ``evaluation``'s estimator on ``problem`` and score every training point's influence on the test
    point (timed: ``timings``), keeping its test iHVP for the residual (:func:`ihvp_residuals`). Every output is
    checked (:func:`check_output`); a failure or a skip is recorded on ``evaluation`` (``failure``, ``skipped``,
    ``error``), never raised. ``bench run`` and the asv suite (``asv_bench/cases.py``) evaluate through this."""
    estimator = evaluation.estimator
    influence_shape = (1, problem.n_train)
    rows = "one row per test point, one column per training point"

    def checked_ihvp() -> torch.Tensor:
        return check_output(
            "ihvp",
            estimator.ihvp(test_gradient),
            tuple(test_gradient.shape),
            test_gradient.dtype,
            "one row per vector, one column per parameter",
        )

    try:
        start = time.perf_counter()
        estimator.prepare(problem)
        prepare_s = time.perf_counter() - start
        if estimator.models:  # extra models are reported apart, at what producing them cost, cached or not
            used = estimator.models
            evaluation.timings["models_s"] = float(used["seconds"])
            fresh = 0.0 if used.get("from_cache", False) else float(used["seconds"])
            prepare_s -= float(used.get("seconds_now", fresh))
        evaluation.timings["prepare_s"] = prepare_s
        overrides_influence = type(estimator).influence is not Estimator.influence
        start = time.perf_counter()
        if overrides_influence:
            scores = estimator.influence([test_index])
        else:  # the same computation as Estimator.influence, keeping the iHVP for the residual
            evaluation.solution = checked_ihvp()
            scores = estimator.influence_from_solutions(evaluation.solution)
        evaluation.timings["query_s"] = time.perf_counter() - start
        evaluation.diagnostics = dict(estimator.diagnostics)
        scores = check_output("influence", scores, influence_shape, problem.dtype, rows)[0]
        evaluation.scores = scores.detach().cpu().double().numpy()
        if overrides_influence and estimator.no_ihvp is None:  # untimed: only for the residual
            evaluation.solution = checked_ihvp()
    except Interrupted:
        raise
    except EstimatorSkipped as skip:
        evaluation.failure, evaluation.skipped, evaluation.error = skip.reason, True, skip
        log.info("estimator %s skipped: %s", evaluation.label, skip.reason)
        return
    except PLUGIN_FAULTS as error:
        evaluation.failure, evaluation.error = _failure(error), error
        log.warning("estimator %s failed: %s", evaluation.label, evaluation.failure)
        return
    models = evaluation.timings.get("models_s")
    log.info(
        "estimator %s: prepare %.2f s%s, query %.2f s",
        evaluation.label,
        evaluation.timings["prepare_s"],
        "" if models is None else f" (+ {models:.2f} s for its {estimator.models.get('kind', 'extra models')})",
        evaluation.timings["query_s"],
    )


def ihvp_residuals(
    evaluations: list[Evaluation],
    problem: Problem,
    test_gradient: torch.Tensor,
) -> DenseHessian | None:
    """Set each evaluation's ``residual``, ``|s - s*| / |s*|`` of its test iHVP ``s`` against the dense float64 solve
    ``s*`` at its own damping, where a dense Hessian exists (shared by ``exact``) or is affordable
    (:data:`DENSE_LIMIT`); returns the dense Hessian, or ``None``."""
    dense = DenseHessian.shared(problem)
    if dense is None and problem.n_params <= DENSE_LIMIT:
        dense = DenseHessian.of(problem)
    if dense is not None:
        for evaluation in evaluations:
            if evaluation.solution is not None:
                exact = dense.solve(test_gradient, evaluation.estimator.damping)
                error = torch.linalg.vector_norm(evaluation.solution.to(exact) - exact)
                evaluation.residual = float(error / torch.linalg.vector_norm(exact))
    return dense


def parameter_change(evaluation: Evaluation, chosen: dict[tuple[str, str], list[int]], problem: Problem) -> None:
    """Set ``evaluation``'s predicted parameter-change norms ``param_norms`` (the ``‖Δθ‖`` diagnostic) for every
    training point its selections ``chosen`` (by :attr:`Evaluation.label` and selection) score; a failure is recorded
    as ``param_failure``."""
    indices = sorted({i for (label, _), idx in chosen.items() if label == evaluation.label for i in idx})
    log.info(
        "estimator %s: parameter change of %d training points (the ‖Δθ‖ diagnostic)",
        evaluation.label,
        len(indices),
    )
    try:
        changes = check_output(
            "parameter_change",
            evaluation.estimator.parameter_change(indices),
            (len(indices), problem.n_params),
            problem.dtype,
            "one row per training point, one column per parameter",
        )
        norms = torch.linalg.vector_norm(changes, dim=1).tolist()
        evaluation.param_norms = dict(zip(indices, norms))
    except Interrupted:
        raise
    except PLUGIN_FAULTS as error:
        evaluation.param_failure = _failure(error)


def influence_rows(
    evaluation: Evaluation, problem: Problem, test_indices: list[int]
) -> tuple[np.ndarray | None, str | None]:
    """The prepared estimator's influence on many test points, ``[T, n_train]`` (float64), in batched calls of its
    :attr:`~benchmark.Estimator.query_rows`, with its time as the ``lds_query_s`` timing; or ``None`` and the reason
    where the estimator fails on them (recorded, never raised)."""
    estimator = evaluation.estimator
    start = time.perf_counter()
    rows = []
    try:
        step = estimator.query_rows or max(1, len(test_indices))
        for begin in range(0, len(test_indices), step):
            chunk = test_indices[begin : begin + step]
            values = check_output(
                "influence",
                estimator.influence(chunk),
                (len(chunk), problem.n_train),
                problem.dtype,
                "one row per test point, one column per training point",
            )
            rows.append(values.detach().cpu().double().numpy())
    except Interrupted:
        raise
    except PLUGIN_FAULTS as error:
        reason = f"influence on {len(test_indices)} test points: {_failure(error)}"
        log.warning("estimator %s failed on the datamodeling test points: %s", evaluation.label, reason)
        return None, reason
    evaluation.timings["lds_query_s"] = time.perf_counter() - start
    return np.concatenate(rows), None
