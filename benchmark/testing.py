"""Conformance suite for estimator plugins, and the reference problems it runs on.

A plugin author runs::

    from benchmark.testing import check_estimator
    check_estimator(MyEstimator)

which asserts the contract every built-in passes: shapes and dtypes, determinism, finite output, and the sign
convention (agreement with exact leave-one-out refits on L2-regularised logistic regression, a convex problem).
"""

from __future__ import annotations

from typing import Any

import torch
from scipy import stats
from torch import Tensor
from torch.func import grad, hessian

from benchmark.estimator import Estimator
from benchmark.problem import Problem


def _linear(params: dict[str, Tensor], x: Tensor) -> Tensor:
    return x @ params["weight"] + params["bias"]


def _logistic(outputs: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets, reduction="none")


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
    params = {"weight": torch.zeros(dim, dtype=torch.float64), "bias": torch.zeros((), dtype=torch.float64)}
    problem = Problem(_linear, _logistic, params, x[:n_train], y[:n_train], x[n_train:], y[n_train:], weight_decay)
    theta = newton(problem)
    return Problem(_linear, _logistic, problem.unflatten(theta), problem.x_train, problem.y_train,
                   problem.x_test, problem.y_test, weight_decay)


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
    """Assert that ``cls`` honours the estimator contract (raises ``AssertionError`` naming the failed check)."""
    problem = logistic_regression_problem(weight_decay=CONFORMANCE_WEIGHT_DECAY)
    test_index = highest_loss_test_point(problem)

    estimator = cls(config)
    estimator.prepare(problem)
    scores = estimator.influence([test_index, 0])
    assert scores.shape == (2, problem.n_train), f"influence shape {tuple(scores.shape)} != (2, {problem.n_train})"
    assert scores.dtype == problem.dtype, f"influence dtype {scores.dtype} != problem dtype {problem.dtype}"
    assert bool(torch.isfinite(scores).all()), "influence has non-finite values"

    vectors = problem.test_gradients([0, 1, 2])
    solutions = estimator.ihvp(vectors)
    assert solutions.shape == vectors.shape, f"ihvp shape {tuple(solutions.shape)} != {tuple(vectors.shape)}"
    changes = estimator.parameter_change([0, 1])
    assert changes.shape == (2, problem.n_params), f"parameter_change shape {tuple(changes.shape)}"

    again = cls(config)
    again.prepare(problem)
    assert torch.equal(again.influence([test_index, 0]), scores), "influence is not deterministic"

    truth = exact_loo_loss_changes(problem, test_index).numpy()
    estimated = scores[0].detach().double().numpy()
    pearson = float(stats.pearsonr(estimated, truth)[0])
    spearman = float(stats.spearmanr(estimated, truth)[0])
    assert pearson > min_correlation and spearman > min_correlation, (
        f"{cls.name}: against exact leave-one-out refits Pearson {pearson:.3f}, Spearman {spearman:.3f} "
        f"(need > {min_correlation}; a negative value means the sign convention is flipped)"
    )
