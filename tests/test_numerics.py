"""Numerics of the harness against references: the closed-form logistic-regression Hessian, dense float64 Hessians
and per-example gradients from plain autograd, stacked against one-at-a-time and ``torch.optim.SGD`` training, and
correlation records against ``scipy.stats``.

Every problem is built lazily by a fixture (nothing trains at import or collection time), in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.func import functional_call

from benchmark import Problem, Recipe
from benchmark.contracts.testing import logistic_regression_problem
from benchmark.evaluation.scoring import correlation, correlations
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.training import descend, minibatches
from estimators.exact import Exact, ExactConfig
from tasks.iris import mlp
from tests.conftest import one_thread


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))


# -- logistic regression: the closed-form Hessian -------------------------------------------------------------------
@pytest.fixture(scope="module")
def logistic() -> SimpleNamespace:
    """The conformance problem at weight decay 0.01 and its Hessian in closed form.

    ``H = X1^T diag(p (1 - p)) X1 / n + weight_decay I`` with ``X1 = [X, 1]``: the weight columns first, then the bias,
    the order in which :meth:`Problem.flatten` concatenates ``{"weight", "bias"}``.
    """
    with one_thread():
        problem = logistic_regression_problem(weight_decay=0.01)
    assert list(problem.params) == ["weight", "bias"]
    x1 = torch.cat([problem.x_train, torch.ones(problem.n_train, 1, dtype=torch.float64)], dim=1)
    p = torch.sigmoid(problem.x_train @ problem.params["weight"][0] + problem.params["bias"][0])
    curvature = (p * (1 - p))[:, None]
    hessian = x1.T @ (x1 * curvature) / problem.n_train + 0.01 * torch.eye(x1.shape[1], dtype=torch.float64)
    return SimpleNamespace(problem=problem, hessian=hessian)


def test_logistic_problem_is_at_its_optimum(logistic):
    assert logistic.problem.gradient_norm() < 1e-10


def test_problem_hessian_equals_the_closed_form(logistic):
    hessian = logistic.problem.hessian()
    assert hessian.shape == logistic.hessian.shape == (6, 6)
    assert relative_error(hessian, logistic.hessian) < 1e-12


@pytest.mark.parametrize("damping", [0.0, 0.001, 0.5])
def test_exact_ihvp_equals_a_solve_with_the_closed_form_hessian(logistic, damping):
    problem = logistic.problem
    generator = torch.Generator().manual_seed(1)
    vectors = torch.cat(
        [
            problem.test_gradients(list(range(5))),
            torch.randn(3, problem.n_params, generator=generator, dtype=torch.float64),
        ]
    )
    system = logistic.hessian + damping * torch.eye(problem.n_params, dtype=torch.float64)
    expected = torch.linalg.solve(system, vectors.T).T
    exact = Exact(ExactConfig(damping=damping))
    exact.prepare(problem)
    solutions = exact.ihvp(vectors)
    assert solutions.dtype == torch.float64
    for row, (solution, reference) in enumerate(zip(solutions, expected)):
        assert relative_error(solution, reference) < 1e-10, row


# -- Problem utilities on a small MLP away from any optimum ---------------------------------------------------------
@pytest.fixture(scope="module")
def untrained() -> SimpleNamespace:
    """A 2x4 tanh MLP at its random initialisation (a generic point: the Hessian there is indefinite), 13 training
    and 5 test examples, weight decay 0.05, with a hand-written objective over the module's own parameter order."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(18, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(3, (18,), generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        module = mlp(depth=2, width=4, activation="tanh").to(torch.float64)

    def model(params, inputs):
        return functional_call(module, params, (inputs,))

    weight_decay = 0.05
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    problem = Problem(model, cross_entropy, params, x[:13], y[:13], x[13:], y[13:], weight_decay)
    shapes = [(name, p.shape) for name, p in module.named_parameters()]

    def split(theta):
        out, start = {}, 0
        for name, shape in shapes:
            out[name] = theta[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return out

    def objective(theta, indices=None):
        xs, ys = (
            (problem.x_train, problem.y_train)
            if indices is None
            else (problem.x_train[indices], problem.y_train[indices])
        )
        outputs = functional_call(module, split(theta), (xs,))
        return nn.functional.cross_entropy(outputs, ys) + 0.5 * weight_decay * theta.dot(theta)

    def example_gradient(theta, x_i, y_i):
        theta = theta.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(functional_call(module, split(theta), (x_i.unsqueeze(0),)), y_i.unsqueeze(0))
        return torch.autograd.grad(loss, theta)[0]

    theta = torch.cat([v.reshape(-1) for _, v in module.named_parameters()]).detach()
    return SimpleNamespace(
        problem=problem,
        module=module,
        objective=objective,
        theta=theta,
        example_gradient=example_gradient,
        split=split,
    )


def test_flatten_follows_parameter_order_and_unflatten_inverts_it(untrained):
    problem = untrained.problem
    assert torch.equal(problem.theta, untrained.theta)
    assert problem.n_params == sum(p.numel() for p in untrained.module.parameters()) == 55
    round_trip = problem.unflatten(problem.flatten(problem.params))
    assert list(round_trip) == list(problem.params)
    for name, value in problem.params.items():
        assert round_trip[name].shape == value.shape
        assert torch.equal(round_trip[name], value)
    other = torch.randn(problem.n_params, dtype=torch.float64)
    assert torch.equal(problem.flatten(problem.unflatten(other)), other)


def test_problem_hessian_equals_autograd_hessian(untrained):
    expected = torch.autograd.functional.hessian(untrained.objective, untrained.theta.clone())
    eigenvalues = torch.linalg.eigvalsh(expected)
    assert float(eigenvalues[0]) < 0 < float(eigenvalues[-1])  # a generic, indefinite point
    for chunk_size in (64, 10):
        assert relative_error(untrained.problem.hessian(chunk_size=chunk_size), expected) < 1e-12


@pytest.mark.parametrize("pass_rows", [None, 2], ids=["one-pass", "passes-of-2"])
@pytest.mark.parametrize("minibatch", [None, [0, 3, 3, 7, 12]], ids=["full", "minibatch"])
def test_hvp_rows_equal_dense_hessian_times_vectors(untrained, minibatch, pass_rows):
    """``H v`` on the full set and on a minibatch (repeats count twice), also summed over passes of 2 examples."""
    problem = dataclasses.replace(untrained.problem)
    if pass_rows:
        problem.PASS_BYTES, problem.MIN_PASS_ROWS = 1, pass_rows
    indices = None if minibatch is None else torch.tensor(minibatch)
    hessian = torch.autograd.functional.hessian(lambda t: untrained.objective(t, indices), untrained.theta.clone())
    vectors = torch.randn(4, problem.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    products = problem.hvp(vectors, indices)
    assert products.shape == vectors.shape
    for product, vector in zip(products, vectors):
        assert relative_error(product, hessian @ vector) < 1e-12


@pytest.mark.parametrize(
    ("chunk_size", "piece_rows", "pieces"),
    [(None, None, 1), (None, 4, 4), (1, None, 0), (6, None, 0), (1024, None, 1)],
    ids=["one-graph", "graph-in-pieces-of-4", "chunk-1", "chunk-6", "chunk-big"],
)
def test_full_data_hvp_is_the_same_in_one_graph_in_pieces_and_in_chunks(untrained, chunk_size, piece_rows, pieces):
    """The kept reverse-over-reverse graph (one chunk; in pieces when :attr:`Problem.PASS_BYTES` is exceeded) and
    the chunked forward-over-reverse sum give ``H v``; the kept graph stays right on repeated calls with new
    vectors."""
    hessian = torch.autograd.functional.hessian(untrained.objective, untrained.theta.clone())
    problem = dataclasses.replace(untrained.problem, chunk_size=chunk_size)
    if piece_rows:
        problem.PASS_BYTES, problem.MIN_PASS_ROWS = 1, piece_rows
    for seed in (4, 5):
        vectors = torch.randn(3, problem.n_params, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(problem.hvp(vectors), vectors @ hessian, rtol=1e-12, atol=1e-14)
    assert len(problem._gradient_graph or []) == pieces


def test_graph_pieces_hold_pass_bytes(untrained):
    """The bytes the gradient's graph saves per example are those of two examples less one (a batch of ``k`` saves
    ``k`` times that plus a constant), and the kept graph's pieces hold at most :attr:`Problem.PASS_BYTES` of them."""
    problem = dataclasses.replace(untrained.problem)
    per_example = problem._graph_bytes_per_example()
    saved: list[int] = []

    def pack(tensor):
        saved[-1] += tensor.numel() * tensor.element_size()
        return tensor

    for count in (1, 5, 13):
        saved.append(0)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            theta = problem.theta.detach().requires_grad_()
            torch.autograd.grad(
                problem.losses(theta, problem.x_train[:count], problem.y_train[:count]).sum(), theta, create_graph=True
            )
    assert saved[1] - saved[0] == 4 * per_example and saved[2] - saved[0] == 12 * per_example
    problem.PASS_BYTES, problem.MIN_PASS_ROWS = 3 * per_example + 1, 1
    problem.hvp(torch.ones(1, problem.n_params, dtype=torch.float64))
    assert len(problem._gradient_graph) == 5  # 13 examples in pieces of 3
    assert [problem._pass_rows(per_example, limit) for limit in (None, 2, 100)] == [3, 2, 3]


# -- the generalised Gauss-Newton matrix against per-example Jacobians -----------------------------------------------
def dense_ggn(untrained, indices=None) -> torch.Tensor:
    """``(1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i + weight_decay I`` from per-example Jacobians of the logits
    (plain autograd, float64), over the training set or the minibatch ``indices`` (repeats count twice)."""
    problem = untrained.problem
    rows = range(problem.n_train) if indices is None else indices
    total = torch.zeros(problem.n_params, problem.n_params, dtype=torch.float64)
    for i in rows:
        x_i = problem.x_train[i].unsqueeze(0)
        jacobian = torch.autograd.functional.jacobian(
            lambda theta: functional_call(untrained.module, untrained.split(theta), (x_i,))[0], untrained.theta.clone()
        )
        p = torch.softmax(functional_call(untrained.module, untrained.split(untrained.theta), (x_i,))[0], dim=0)
        total += jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ jacobian
    return total / len(rows) + problem.weight_decay * torch.eye(problem.n_params, dtype=torch.float64)


@pytest.mark.parametrize(
    ("chunk_size", "pass_rows", "minibatch"),
    [(None, None, None), (None, 2, None), (5, None, None), (None, None, [0, 3, 3, 7, 12]), (None, 2, [0, 3, 3, 7])],
    ids=["one-pass", "passes-of-2", "chunks-of-5", "minibatch", "minibatch-passes-of-2"],
)
def test_ggnvp_rows_equal_the_dense_ggn_from_per_example_jacobians(untrained, chunk_size, pass_rows, minibatch):
    problem = dataclasses.replace(untrained.problem, chunk_size=chunk_size)
    if pass_rows:
        problem.PASS_BYTES, problem.MIN_PASS_ROWS = 1, pass_rows
    indices = None if minibatch is None else torch.tensor(minibatch)
    reference = dense_ggn(untrained, minibatch)
    vectors = torch.randn(4, problem.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    products = problem.ggnvp(vectors, indices)
    assert products.shape == vectors.shape
    for product, vector in zip(products, vectors):
        assert relative_error(product, reference @ vector) < 1e-12


def test_dense_ggn_is_positive_semi_definite_where_the_hessian_is_not(untrained):
    """At a random initialisation the Hessian has negative eigenvalues; the GGN's are at least the weight decay."""
    problem = untrained.problem
    ggn = problem.ggn(chunk_size=10)
    assert relative_error(ggn, dense_ggn(untrained)) < 1e-12
    assert relative_error(ggn, ggn.T) < 1e-14
    ggn_eigenvalues = torch.linalg.eigvalsh(ggn)
    assert float(ggn_eigenvalues[0]) > problem.weight_decay - 1e-12
    assert float(torch.linalg.eigvalsh(problem.hessian())[0]) < 0


def _squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 1.5 * (outputs - targets).square().mean(dim=1)  # output Hessian 3/C I: a scale the GGN must carry


@pytest.mark.parametrize("linear", [True, False], ids=["linear", "tanh-mlp"])
def test_ggn_of_squared_error_is_the_scaled_jacobian_gram_and_the_hessian_of_a_linear_model(linear):
    """Squared error: ``G = (3/C) (1/n) sum_i J_i^T J_i + weight_decay I``; for a model linear in ``theta`` that is its
    Hessian, and for a nonlinear one it is not (the model's second derivatives are left out)."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(12, 2, generator=generator, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        module = (nn.Linear(3, 2) if linear else nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))).double()
    problem = Problem.from_module(module, _squared_error, x[:9], targets[:9], x[9:], targets[9:], weight_decay=0.02)
    gram = torch.zeros(problem.n_params, problem.n_params, dtype=torch.float64)
    for i in range(problem.n_train):
        jacobian = torch.autograd.functional.jacobian(
            lambda theta: problem.model(problem.unflatten(theta), problem.x_train[i : i + 1])[0], problem.theta
        )
        gram += jacobian.T @ jacobian
    expected = 1.5 * 2 / 2 * gram / problem.n_train + 0.02 * torch.eye(problem.n_params, dtype=torch.float64)
    ggn = problem.ggn()
    assert relative_error(ggn, expected) < 1e-12
    if linear:
        assert relative_error(ggn, problem.hessian()) < 1e-12
    else:
        assert relative_error(ggn, problem.hessian()) > 1e-3


def test_train_and_test_gradients_equal_per_example_autograd(untrained):
    problem = untrained.problem
    train = problem.train_gradients(list(range(problem.n_train)))
    test = problem.test_gradients([4, 0, 2])
    expected_train = torch.stack(
        [
            untrained.example_gradient(untrained.theta, problem.x_train[i], problem.y_train[i])
            for i in range(problem.n_train)
        ]
    )
    expected_test = torch.stack(
        [untrained.example_gradient(untrained.theta, problem.x_test[j], problem.y_test[j]) for j in [4, 0, 2]]
    )
    torch.testing.assert_close(train, expected_train, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(test, expected_test, rtol=1e-12, atol=1e-14)
    # the regulariser is not part of a per-example gradient, so the mean of the g_i plus weight_decay * theta is grad J
    full = torch.func.grad(untrained.objective)(untrained.theta)
    torch.testing.assert_close(train.mean(0) + problem.weight_decay * untrained.theta, full, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1024])
def test_iter_train_gradients_chunks_cover_every_row_once(untrained, chunk_size):
    problem = untrained.problem
    chunks = list(problem.iter_train_gradients(chunk_size=chunk_size))
    assert len(chunks) == math.ceil(problem.n_train / chunk_size)
    covered = []
    for rows, grads in chunks:
        assert grads.shape == (rows.stop - rows.start, problem.n_params)
        assert rows.stop - rows.start <= chunk_size
        covered.extend(range(rows.start, rows.stop))
    assert covered == list(range(problem.n_train))
    everything = problem.train_gradients(list(range(problem.n_train)))
    torch.testing.assert_close(torch.cat([grads for _, grads in chunks]), everything, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(("chunk_size", "rows_per_pass"), [(1, 1), (5, 1), (6, 2), (1024, 341), (None, None)])
def test_train_gradient_products_forward_mode_equal_explicit_matrix_product(untrained, chunk_size, rows_per_pass):
    """Where per-example gradients do not fit :attr:`Problem.PASS_BYTES`, the forward-mode products are right
    whatever the chunking, and a pass along the 3 vectors takes ``chunk_size // 3`` examples (at least one), so its
    memory is that of ``chunk_size`` examples; no chunk size at all: one pass."""
    seen: list[int] = []

    def model(params, x):
        seen.append(len(x))
        return untrained.problem.model(params, x)

    problem = dataclasses.replace(untrained.problem, model=model)
    problem.PASS_BYTES = 1
    vectors = torch.randn(3, problem.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gradients = untrained.problem.train_gradients(list(range(problem.n_train)))
    problem._graph_bytes_per_example()
    seen.clear()
    products = problem.train_gradient_products(vectors, chunk_size=chunk_size)
    assert products.shape == (3, problem.n_train)
    torch.testing.assert_close(products, vectors @ gradients.T, rtol=1e-12, atol=1e-14)
    assert max(seen) == min(rows_per_pass or problem.n_train, problem.n_train)
    assert len(seen) == math.ceil(problem.n_train / (rows_per_pass or problem.n_train))


@pytest.mark.parametrize(("chunk_size", "min_rows", "rows_per_pass"), [(None, 64, 13), (5, 64, 5), (None, 4, 4)])
def test_train_gradient_products_from_per_example_gradients_equal_explicit_matrix_product(
    untrained, monkeypatch, chunk_size, min_rows, rows_per_pass
):
    """Where :attr:`Problem.MIN_PASS_ROWS` per-example gradients fit :attr:`Problem.PASS_BYTES`, the products come
    from per-example gradients in passes of at most that memory (and at most ``chunk_size`` examples)."""
    problem = dataclasses.replace(untrained.problem)
    per_example = problem.n_params * 8 + problem._graph_bytes_per_example()
    problem.PASS_BYTES, problem.MIN_PASS_ROWS = min_rows * per_example, min_rows
    passes: list[int] = []
    example_gradients = problem._example_gradients

    def spy(x, y):
        passes.append(len(x))
        return example_gradients(x, y)

    monkeypatch.setattr(problem, "_example_gradients", spy)
    vectors = torch.randn(3, problem.n_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    products = problem.train_gradient_products(vectors, chunk_size=chunk_size)
    gradients = untrained.problem.train_gradients(list(range(problem.n_train)))
    torch.testing.assert_close(products, vectors @ gradients.T, rtol=1e-12, atol=1e-14)
    assert max(passes) == rows_per_pass and sum(passes) == problem.n_train


# -- training: stacked models, one at a time, and torch.optim.SGD ---------------------------------------------------
RECIPES = {
    "full-batch": Recipe(steps=40, lr=0.2),
    "minibatch-momentum": Recipe(steps=40, lr=0.1, batch_size=4, momentum=0.9, seed=7),
}


def removal_weights(n: int) -> torch.Tensor:
    """Four models: all data, without point 0, without points 3 and 7, and with fractional weights."""
    weights = torch.ones(4, n, dtype=torch.float64)
    weights[1, 0] = 0.0
    weights[2, [3, 7]] = 0.0
    weights[3] = torch.linspace(0.2, 1.0, n, dtype=torch.float64)
    return weights


@pytest.mark.parametrize("name", list(RECIPES))
def test_stacked_descent_equals_each_model_alone(untrained, name):
    problem, recipe = untrained.problem, RECIPES[name]
    weights = removal_weights(problem.n_train)
    generator = torch.Generator().manual_seed(4)
    starts = problem.theta + 0.1 * torch.randn(len(weights), problem.n_params, generator=generator, dtype=torch.float64)
    stacked = descend(problem, starts, weights, recipe)
    assert stacked.shape == starts.shape
    for k in range(len(weights)):
        alone = descend(problem, starts[k : k + 1], weights[k : k + 1], recipe)[0]
        assert float((stacked[k] - alone).abs().max()) <= 1e-10 * max(1.0, float(alone.abs().max())), k
    # the models really differ (so the comparison above is not between copies of one model)
    assert float((stacked[1] - stacked[0]).abs().max()) > 1e-4


@pytest.mark.parametrize("name", list(RECIPES))
def test_descend_matches_torch_sgd(untrained, name):
    """One model without point 3: ``torch.optim.SGD`` (momentum, weight decay) on the weighted minibatch losses over
    the minibatch size (removal re-weights a point to 0 and keeps the normalisation)."""
    problem, recipe = untrained.problem, RECIPES[name]
    weights = torch.ones(problem.n_train, dtype=torch.float64)
    weights[3] = 0.0
    module = copy.deepcopy(untrained.module)
    optimiser = torch.optim.SGD(
        module.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=problem.weight_decay
    )
    for batch in minibatches(recipe, problem.n_train, torch.device("cpu")):
        batch = torch.arange(problem.n_train) if batch is None else batch
        losses = nn.functional.cross_entropy(module(problem.x_train[batch]), problem.y_train[batch], reduction="none")
        w = weights[batch]
        loss = (losses * w).sum() / len(w)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    expected = nn.utils.parameters_to_vector(module.parameters()).detach()
    actual = descend(problem, problem.theta.unsqueeze(0), weights.unsqueeze(0), recipe)[0]
    assert float((actual - expected).abs().max()) < 1e-10
    assert float((actual - problem.theta).abs().max()) > 1e-3  # it moved


@pytest.mark.parametrize("n, batch_size, steps", [(13, 4, 11), (12, 4, 7), (13, 5, 1), (40, 8, 23)])
def test_minibatches_are_repeatable_and_counted(n, batch_size, steps):
    recipe = Recipe(steps=steps, lr=0.1, batch_size=batch_size, seed=3)
    first = list(minibatches(recipe, n, torch.device("cpu")))
    second = list(minibatches(recipe, n, torch.device("cpu")))
    assert len(first) == len(second) == steps
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    per_epoch = n // batch_size
    for batch in first:
        assert batch.shape == (batch_size,)
        assert int(batch.min()) >= 0 and int(batch.max()) < n
    for epoch in range(0, steps, per_epoch):  # within an epoch the batches are disjoint (a permutation, tail dropped)
        seen = torch.cat(first[epoch : epoch + per_epoch])
        assert len(set(seen.tolist())) == len(seen)
    other_seed = list(minibatches(Recipe(steps=steps, lr=0.1, batch_size=batch_size, seed=4), n, torch.device("cpu")))
    if n > batch_size:
        assert not all(torch.equal(a, b) for a, b in zip(first, other_seed))


@pytest.mark.parametrize("batch_size", [None, 13, 50])
def test_full_batch_recipes_yield_none_for_every_step(batch_size):
    recipe = Recipe(steps=6, lr=0.1, batch_size=batch_size)
    assert list(minibatches(recipe, 13, torch.device("cpu"))) == [None] * 6


# -- correlation records --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_with_constant_retrained_values_is_undefined(method):
    record = correlation(method, [0.1, 0.5, 0.3, 0.9], [2.0, 2.0, 2.0, 2.0])
    assert record["value"] is None
    assert "constant" in record["undefined"] and "re-trained" in record["undefined"]
    assert record["n"] == 4
    record = correlation(method, [1.0, 1.0, 1.0], [0.1, 0.2, 0.4])
    assert record["value"] is None and "constant" in record["undefined"]


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_correlation_of_fewer_than_three_points_is_undefined(method, n):
    record = correlation(method, [0.1, 0.7][:n], [0.3, 0.2][:n])
    assert record["value"] is None
    assert record["undefined"]
    assert record["n"] == n


def test_correlation_of_non_finite_values_is_undefined():
    record = correlation("pearson", [0.1, float("nan"), 0.3], [0.1, 0.2, 0.4])
    assert record["value"] is None and "non-finite" in record["undefined"]


def test_pearson_of_nearly_constant_values_warns_in_the_record_not_on_stderr(capfd):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would fail here
        record = correlation("pearson", [1.0, 1.0 + 1e-14, 1.0 - 1e-14, 1.0], [0.1, 0.2, 0.4, 0.3])
    assert "nearly constant" in record["warning"]
    assert capfd.readouterr().err == ""
    assert "warning" not in correlation("pearson", [0.1, 0.5, 0.3, 0.9], [0.1, 0.2, 0.4, 0.3])


def test_correlation_of_mismatched_lengths_raises():
    with pytest.raises(ValueError):
        correlation("spearman", [0.1, 0.2, 0.3], [0.1, 0.2])


@pytest.mark.parametrize("method, reference", [("pearson", stats.pearsonr), ("spearman", stats.spearmanr)])
def test_correlation_matches_scipy(method, reference):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=25)
    estimated = 0.7 * truth + 0.5 * rng.normal(size=25)
    estimated[3] = estimated[7]  # a tie, which Spearman ranks as scipy does
    expected = reference(estimated, truth)
    record = correlation(method, estimated.tolist(), truth.tolist())
    assert record["n"] == 25
    assert record["value"] == pytest.approx(float(expected[0]), rel=1e-12)
    assert record["p_value"] == pytest.approx(float(expected[1]), rel=1e-9)
    assert 0.5 < record["value"] < 1.0
    both = correlations(estimated, truth)
    assert both[method]["value"] == record["value"]
    flipped = correlation(method, (-estimated).tolist(), truth.tolist())
    assert flipped["value"] == pytest.approx(-record["value"], rel=1e-12)


def test_losses_float64_casts_parameters_frozen_parameters_inputs_and_buffers():
    """``Problem.losses_float64`` of a float32 network with BatchNorm in evaluation mode (float32 running statistics)
    and a frozen layer equals the float64 copy of that network, to float64 rounding: every tensor the forward pass
    reads is cast up, buffers included."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).eval()
    module[1].running_mean.uniform_(-1, 1)
    module[1].running_var.uniform_(0.5, 2)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    problem = Problem.from_module(module, cross_entropy, x, y, x, y).restricted(["3.weight", "3.bias"])
    assert problem.frozen and problem.dtype == torch.float32
    reference = copy.deepcopy(module).double()
    expected = torch.nn.functional.cross_entropy(reference(x.double()), y, reduction="none")
    got = problem.losses_float64(problem.theta, x, y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    in_float32 = problem.losses(problem.theta, x, y)
    assert in_float32.dtype == torch.float32  # the problem's own losses keep its precision
