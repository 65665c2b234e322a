"""Layer selection (``layers: last``) against dense float64 references: the restricted problem's derivatives are blocks
of the whole problem's, and every built-in estimator with ``layers: last`` solves against the last module's block of
an independently computed Hessian, zero elsewhere."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from benchmark import Estimator, ScopedEstimator
from benchmark.common import config as configuration
from benchmark.common.cache import Cache
from benchmark.common.errors import UnknownNameError
from estimators.arnoldi import Arnoldi, ArnoldiConfig
from estimators.cg import CGConfig, ConjugateGradient
from estimators.exact import Exact, ExactConfig
from estimators.first_order import FirstOrder, FirstOrderConfig
from estimators.lissa import Lissa, LissaConfig
from tests.conftest import one_thread
from tests.test_estimators import MLP_WEIGHT_DECAY, build_mlp_problem


@pytest.fixture(scope="module")
def mlp() -> SimpleNamespace:
    """The 2x6 tanh MLP at its optimum, with its dense float64 Hessian from torch's own cross-entropy (independent of
    :class:`~benchmark.Problem`) and the positions of its last layer (``4.weight``, ``4.bias``) in ``theta``."""
    with one_thread():
        problem, module = build_mlp_problem()
        shapes = [(name, p.shape) for name, p in module.named_parameters()]

        def objective(theta: torch.Tensor) -> torch.Tensor:
            params = dict(zip([name for name, _ in shapes], torch.split(theta, [s.numel() for _, s in shapes])))
            params = {name: params[name].reshape(shape) for name, shape in shapes}
            outputs = functional_call(module, params, (problem.x_train,))
            return nn.functional.cross_entropy(outputs, problem.y_train) + 0.5 * MLP_WEIGHT_DECAY * theta.dot(theta)

        hessian = torch.autograd.functional.hessian(objective, problem.theta.clone())
    last = problem.params[shapes[-2][0]].numel() + problem.params[shapes[-1][0]].numel()
    columns = torch.arange(problem.n_params - last, problem.n_params)
    return SimpleNamespace(problem=problem, hessian=hessian, columns=columns, names=[name for name, _ in shapes])


def block_solve(mlp: SimpleNamespace, vectors: torch.Tensor, damping: float) -> torch.Tensor:
    """``(H_SS + damping I)^-1 v_S`` on the last layer's positions ``S``, zero elsewhere."""
    block = mlp.hessian[mlp.columns][:, mlp.columns]
    out = torch.zeros_like(vectors)
    out[:, mlp.columns] = torch.linalg.solve(
        block + damping * torch.eye(len(mlp.columns), dtype=block.dtype), vectors[:, mlp.columns].T
    ).T
    return out


def test_the_last_layer_is_the_last_modules_weight_and_bias(mlp):
    problem = mlp.problem
    assert problem.layer_parameters("all") == mlp.names
    assert problem.layer_parameters("last") == mlp.names[-2:]
    assert torch.equal(problem.columns(mlp.names[-2:]), mlp.columns)
    with pytest.raises(ValueError, match=r"unknown layers 'first' \(choices: all, last\)"):
        problem.layer_parameters("first")
    with pytest.raises(ValueError, match=r"unknown parameters nope \(choices: 0.weight"):
        problem.restricted(["nope"])
    with pytest.raises(ValueError, match="no parameters selected"):
        problem.restricted([])


def test_the_restricted_problem_has_the_blocks_of_the_whole_problems_derivatives(mlp):
    problem = mlp.problem
    scope = problem.restricted(mlp.names[-2:])
    assert list(scope.params) == mlp.names[-2:] and scope.n_params == len(mlp.columns)
    assert set(scope.frozen) == set(mlp.names[:-2])
    torch.testing.assert_close(scope.hessian(), mlp.hessian[mlp.columns][:, mlp.columns], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scope.ggn(), problem.ggn()[mlp.columns][:, mlp.columns], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        scope.train_gradients([0, 5]), problem.train_gradients([0, 5])[:, mlp.columns], rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(scope.test_losses(), problem.test_losses(), rtol=0, atol=0)
    # the objective differs only by the frozen parameters' weight-decay term, a constant
    frozen = problem.theta[: problem.n_params - len(mlp.columns)]
    constant = 0.5 * MLP_WEIGHT_DECAY * float(frozen.dot(frozen))
    assert float(scope.objective(scope.theta)) + constant == pytest.approx(float(problem.objective(problem.theta)))
    network = scope.network_at().module  # the whole module, every parameter at the optimum
    for name, value in network.named_parameters():
        assert torch.equal(value, problem.params[name])


CASES = {
    "exact": (Exact, ExactConfig(damping=0.01, layers="last"), 1e-10),
    "cg": (ConjugateGradient, CGConfig(damping=0.01, tol=1e-12, layers="last"), 1e-8),
    "arnoldi": (Arnoldi, ArnoldiConfig(rank=21, iterations=21, damping=0.01, layers="last"), 1e-9),  # full rank
    # damping 0.3 and scale 20 as the LiSSA depth test on the whole MLP: its stochastic floor is about 3e-3
    "lissa": (Lissa, LissaConfig(damping=0.3, scale=20.0, depth=3000, layers="last"), 2e-2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_estimator_with_the_last_layer_solves_against_its_block_of_the_dense_hessian(mlp, name):
    cls, config, tolerance = CASES[name]
    problem = mlp.problem
    vectors = problem.test_gradients([0, 1, 2])
    estimator = cls(config)
    estimator.prepare(problem)
    answer = estimator.ihvp(vectors)
    reference = block_solve(mlp, vectors, config.damping)
    outside = torch.ones(problem.n_params, dtype=torch.bool)
    outside[mlp.columns] = False
    assert bool((answer[:, outside] == 0).all())
    error = torch.linalg.vector_norm(answer - reference, dim=1) / torch.linalg.vector_norm(reference, dim=1)
    assert float(error.max()) < tolerance, (name, error)


def test_last_layer_influence_is_the_block_formula_and_first_order_the_block_gradient_dot(mlp):
    """``(1/n) g_test,S^T (H_SS + lambda I)^-1 g_i,S`` from full-problem gradients, for exact; the same with ``I`` for
    first-order. The influence's training-gradient products run on the scope alone."""
    problem, damping = mlp.problem, 0.01
    test = problem.test_gradients([3])
    train = problem.train_gradients(list(range(problem.n_train)))
    expected = block_solve(mlp, test, damping) @ train.T / problem.n_train
    exact = Exact(ExactConfig(damping=damping, layers="last"))
    exact.prepare(problem)
    torch.testing.assert_close(exact.influence([3]), expected, rtol=1e-9, atol=1e-14)
    first_order = FirstOrder(FirstOrderConfig(scale=2.0, layers="last"))
    first_order.prepare(problem)
    block_dot = test[:, mlp.columns] @ train[:, mlp.columns].T / 2.0 / problem.n_train
    torch.testing.assert_close(first_order.influence([3]), block_dot, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(block_dot, test @ train.T / 2.0 / problem.n_train)  # the other layers do count


def test_exact_caches_the_last_layer_block_apart_from_the_whole_hessian(mlp, tmp_path):
    cache = Cache(tmp_path)
    problem = dataclasses.replace(mlp.problem, curvature_cache=(cache, {"task": "test-mlp-layers"}))
    for layers in ("last", "all", "last"):
        estimator = Exact(ExactConfig(layers=layers))
        estimator.prepare(problem)
    entries = sorted(path.name for path in (tmp_path / "hessians").glob("*.pt"))
    assert len(entries) == 2, entries  # one block, one whole Hessian; the second "last" run read its block back
    assert estimator.diagnostics["hessian_from_cache"]


def test_an_unknown_layers_value_is_named_with_the_choices():
    with pytest.raises(UnknownNameError, match=r"exact.layers 'first' \(choices: all, last\)"):
        configuration.build(ExactConfig, {"layers": "first"}, "exact")


def test_a_scoped_estimator_without_a_layers_field_is_not_a_usable_estimator():
    class NoLayers(ScopedEstimator):
        name = "no-layers"

        def scope_ihvp(self, vectors: torch.Tensor) -> torch.Tensor:
            return vectors

    problems = NoLayers.contract_problems()
    assert any("without a Config field 'layers'" in problem for problem in problems), problems
    assert issubclass(NoLayers, Estimator)


def test_bench_run_with_last_layer_exact_on_iris(bench, tiny, tmp_path, read_records):
    """End to end: ``--set exact.layers=last`` is recorded in the hyperparameters, and the run's exact scores only
    the last layer (its residual against the whole Hessian's solve is no longer rounding)."""
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimators",
        "exact",
        "--set",
        "exact.layers=last",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
        "--no-leaderboard",
    )
    assert result.code == 0, result.err
    records = read_records(tmp_path / "results")
    assert len(records) == 2  # the top and the random selection
    for record in records:
        assert record["status"] == "ok", record["failure"]
        assert record["estimator"]["hyperparameters"]["layers"] == "last"
        assert record["metrics"]["ihvp_relative_residual"] > 1e-3
