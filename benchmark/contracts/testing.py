"""Conformance suite for estimator plugins, and the reference problems it runs on.

A plugin author runs::

    from benchmark.contracts.testing import check_estimator
    check_estimator(MyEstimator)

which asserts the contract every built-in passes: shapes and dtypes, determinism, finite output, and the sign
convention (agreement with exact leave-one-out refits on L2-regularised logistic regression, a convex problem).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from scipy import stats
from torch import Tensor
from torch.func import grad, hessian

from benchmark.contracts.estimator import Estimator
from benchmark.numerics.problem import Problem
from benchmark.numerics.recipes import Recipe
from benchmark.numerics.trajectory import TrainingRun


def _logistic(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example logistic loss of ``[N, 1]`` logits and ``[N, 1]`` labels, ``Tensor[N]``."""
    return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets, reduction="none").sum(dim=1)


def newton(problem: Problem, weights: Tensor | None = None, tol: float = 1e-12, max_iter: int = 100) -> Tensor:
    """Minimise the (example-weighted) objective of a convex ``problem`` by Newton's method from its ``theta``.

    With ``weights`` (0 removes an example) the data term is ``sum_i w_i l_i / sum_i w_i``.
    """
    w = torch.ones(problem.n_train, dtype=problem.dtype) if weights is None else weights

    def objective(theta: Tensor) -> Tensor:
        losses = problem.losses(theta, problem.x_train, problem.y_train)
        return (losses * w).sum() / w.sum() + 0.5 * problem.weight_decay * theta.dot(theta)

    theta = problem.theta.clone()
    for _ in range(max_iter):
        gradient = grad(objective)(theta)
        if float(torch.linalg.vector_norm(gradient)) < tol:
            break
        theta = theta - torch.linalg.solve(hessian(objective)(theta), gradient)
    return theta


def logistic_regression_problem(
    n_train: int = 60, n_test: int = 20, dim: int = 5, weight_decay: float = 0.01, seed: int = 0
) -> Problem:
    """L2-regularised logistic regression in float64, at its optimum (Newton to a gradient norm below 1e-12)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, dim, generator=generator, dtype=torch.float64)
    w_true = torch.randn(dim, generator=generator, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x @ w_true), generator=generator)
    module = torch.nn.Linear(dim, 1, dtype=torch.float64)
    torch.nn.init.zeros_(module.weight)
    torch.nn.init.zeros_(module.bias)
    y = y.unsqueeze(1)
    problem = Problem.from_module(
        module,
        _logistic,
        x[:n_train],
        y[:n_train],
        x[n_train:],
        y[n_train:],
        weight_decay,
        loss_module=torch.nn.BCEWithLogitsLoss(),
    )
    # a training run for estimators that sum over checkpoints (tracin): full-batch gradient descent from the zero
    # initialisation, which reaches the Newton optimum to rounding (the Hessian's condition number is about 2.3)
    run = TrainingRun(problem, [Recipe(steps=200, lr=1.0)])
    return dataclasses.replace(problem, params=problem.unflatten(newton(problem)), training_run=run)


def exact_loo_loss_changes(problem: Problem, test_index: int) -> Tensor:
    """``loss_test(theta_-i) - loss_test(theta*)`` for every training point ``i``, by exact Newton refits."""
    base = float(problem.test_losses()[test_index])
    changes = []
    for i in range(problem.n_train):
        weights = torch.ones(problem.n_train, dtype=problem.dtype)
        weights[i] = 0.0
        theta = newton(problem, weights)
        changes.append(float(problem.test_losses(theta)[test_index]) - base)
    return torch.tensor(changes, dtype=torch.float64)


def highest_loss_test_point(problem: Problem) -> int:
    """Index of the test point with the highest loss."""
    return int(problem.test_losses().argmax())


CONFORMANCE_WEIGHT_DECAY = 0.1
"""Weight decay of the conformance problem: its Hessian's eigenvalues then lie within a factor of about 2.3 of each
other, close enough to a multiple of the identity that a correct Hessian-free estimator also clears the bar."""


def check_estimator(cls: type[Estimator], config: Any | None = None, min_correlation: float = 0.9) -> None:
    """Assert that ``cls`` honours the estimator contract; an ``AssertionError`` names the estimator and the check.

    Checks: a registrable class (an :class:`Estimator` subclass with a ``name``, an ``ihvp`` or a declared
    ``no_ihvp``); the types, shapes, dtypes and finiteness of ``influence``, ``ihvp`` and ``parameter_change`` (the
    last two unless the class declares ``no_ihvp``); determinism; and the sign convention, by correlation with exact
    leave-one-out refits of an L2-regularised logistic regression (:data:`CONFORMANCE_WEIGHT_DECAY`).

    Args:
        cls: the estimator class.
        config: an instance of ``cls.Config`` (default: its defaults).
        min_correlation: the Pearson and the Spearman correlation with the exact refits must both exceed it (default
            0.9, which every built-in clears; a Hessian-free estimator such as ``first-order`` clears it because the
            conformance problem is well conditioned). Lower it for an estimator that is approximate by design; a
            negative correlation means the sign convention is flipped.
    """
    assert isinstance(cls, type) and issubclass(cls, Estimator), f"{cls!r} is not a benchmark.Estimator subclass"
    problems = cls.contract_problems()
    assert not problems, "; ".join(problems)
    label = cls.name
    with warnings.catch_warnings():
        # torch's forward-mode AD scripts its decompositions on first use and warns about its own deprecated API
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        _check(cls, label, config, min_correlation)


def _check_tensor(label: str, method: str, value: Any, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    assert isinstance(value, Tensor), f"{label}: {method} returned a {type(value).__name__}, expected a torch.Tensor"
    assert tuple(value.shape) == shape, f"{label}: {method} shape {tuple(value.shape)}, expected {shape}"
    assert value.dtype == dtype, f"{label}: {method} dtype {value.dtype}, expected the problem's dtype {dtype}"
    assert bool(torch.isfinite(value).all()), f"{label}: {method} has non-finite values"
    return value


def _call(label: str, method: str, function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as error:
        raise AssertionError(f"{label}: {method} raised {type(error).__name__}: {error}") from error


def _check(cls: type[Estimator], label: str, config: Any | None, min_correlation: float) -> None:
    problem = logistic_regression_problem(weight_decay=CONFORMANCE_WEIGHT_DECAY)
    test_index = highest_loss_test_point(problem)

    estimator = cls(config)
    estimator.prepare(problem)
    if cls.no_ihvp is None:
        vectors = problem.test_gradients([0, 1, 2])
        _check_tensor(label, "ihvp", _call(label, "ihvp", estimator.ihvp, vectors), tuple(vectors.shape), problem.dtype)
        _check_tensor(
            label,
            "parameter_change",
            _call(label, "parameter_change", estimator.parameter_change, [0, 1]),
            (2, problem.n_params),
            problem.dtype,
        )
    scores = _check_tensor(
        label,
        "influence",
        _call(label, "influence", estimator.influence, [test_index, 0]),
        (2, problem.n_train),
        problem.dtype,
    )

    again = cls(config)
    again.prepare(problem)
    assert torch.equal(again.influence([test_index, 0]), scores), f"{label}: influence is not deterministic"

    truth = exact_loo_loss_changes(problem, test_index).numpy()
    estimated = scores[0].detach().double().numpy()
    pearson = float(stats.pearsonr(estimated, truth)[0])
    spearman = float(stats.spearmanr(estimated, truth)[0])
    assert pearson > min_correlation and spearman > min_correlation, (
        f"{label}: against exact leave-one-out refits Pearson {pearson:.3f}, Spearman {spearman:.3f} "
        f"(need > {min_correlation}; a negative value means the sign convention is flipped)"
    )
