"""K-FAC and EK-FAC against dense float64 references: the exact case of a linear model with a squared error, the
eigenvalue correction's optimality on an MLP, layer selection, and the failures they record."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmark import Problem
from benchmark.common import config as configuration
from benchmark.common.errors import EstimatorFailed, UnknownNameError, UsageError
from estimators.kfac import EKFAC, KFAC, KFACConfig
from tests.conftest import one_thread
from tests.test_estimators import build_mlp_problem


def dense_inverse(estimator: KFAC, problem: Problem) -> torch.Tensor:
    """The estimator's iHVP as a dense ``P x P`` matrix (its action on the identity)."""
    return estimator.ihvp(torch.eye(problem.n_params, dtype=problem.dtype))


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error over the outputs: ``nn.MSELoss()`` is its mean over a batch."""
    return (outputs - targets).square().mean(dim=1)


def linear_regression(weight_decay: float, outputs: int = 3, n_train: int = 30) -> Problem:
    """A ``Linear(4, outputs)`` with a squared error at random parameters (K-FAC's exactness needs no optimum)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + 5, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(n_train + 5, outputs, generator=generator, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Linear(4, outputs, dtype=torch.float64)
    split = (x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    return Problem.from_module(module, squared_error, *split, weight_decay, loss_module=nn.MSELoss())


@pytest.mark.parametrize("cls", [KFAC, EKFAC], ids=lambda cls: cls.name)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_kfac_is_the_exact_damped_inverse_of_a_linear_models_squared_error_ggn(cls, weight_decay):
    """For a linear layer under a squared error the output Hessian is ``(2/C) I`` for every example, so ``G`` is a
    constant and ``G (x) A`` (weight and bias as one block) is the GGN itself: both estimators equal
    ``(GGN + (damping + weight_decay) I)^-1`` to rounding, with the weight decay added to the damping."""
    problem = linear_regression(weight_decay)
    estimator = cls(KFACConfig(damping=0.01))
    estimator.prepare(problem)
    identity = torch.eye(problem.n_params, dtype=torch.float64)
    expected = torch.linalg.inv(problem.ggn() + 0.01 * identity)
    torch.testing.assert_close(dense_inverse(estimator, problem), expected, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def mlp() -> SimpleNamespace:
    with one_thread():
        problem, _ = build_mlp_problem()
        identity = torch.eye(problem.n_params, dtype=torch.float64)
        ggn = problem.ggn() - problem.weight_decay * identity  # the loss's GGN: K-FAC factors it, not the regulariser
    return SimpleNamespace(problem=problem, ggn=ggn)


def factored_matrix(estimator: KFAC, problem: Problem, damping: float) -> torch.Tensor:
    """``K`` itself, recovered from the dense damped inverse."""
    identity = torch.eye(problem.n_params, dtype=torch.float64)
    return torch.linalg.inv(dense_inverse(estimator, problem)) - (damping + problem.weight_decay) * identity


def test_ekfac_is_no_further_from_the_ggn_than_kfac_and_both_keep_its_layer_blocks(mlp):
    """On a 2x6 tanh MLP (cross-entropy, three classes), in the Frobenius norm within each layer's block: EK-FAC's
    diagonal in K-FAC's eigenbasis is the best one there, so its error is at most K-FAC's (here strictly smaller);
    across layers both are zero. Measured Frobenius errors per layer: K-FAC 1.13, 0.39, 0.22, EK-FAC 0.64, 0.27, 0.19,
    against GGN blocks of norm 1.38, 0.49, 0.37 (K-FAC overstates the trace: ``E[g^2] E[a a^T]`` is not
    ``E[g^2 a a^T]``)."""
    problem, ggn = mlp.problem, mlp.ggn
    names = list(problem.params)
    sizes = [problem.params[name].numel() for name in names]
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    layers = [slice(bounds[k], bounds[k + 2]) for k in range(0, len(names), 2)]  # each Linear's weight and bias
    errors = {}
    for cls in (KFAC, EKFAC):
        estimator = cls(KFACConfig(damping=0.01))
        estimator.prepare(problem)
        matrix = factored_matrix(estimator, problem, 0.01)
        torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=1e-10)
        block_mask = torch.zeros_like(matrix, dtype=torch.bool)
        for layer in layers:
            block_mask[layer, layer] = True
        assert float(matrix[~block_mask].abs().max()) < 1e-10
        errors[cls.name] = [float(torch.linalg.matrix_norm(matrix[b, b] - ggn[b, b])) for b in layers]
        for b, error, layer in zip(layers, errors[cls.name], ("0", "2", "4")):
            assert error < float(torch.linalg.matrix_norm(ggn[b, b])), (cls.name, b)  # closer than the zero matrix
            assert estimator.diagnostics["trace"][layer] == pytest.approx(float(matrix[b, b].trace()), rel=1e-10)
            if cls is EKFAC:  # its eigenvalues are the diagonal of Q^T GGN Q, so the trace is the GGN's
                assert float(matrix[b, b].trace()) == pytest.approx(float(ggn[b, b].trace()), rel=1e-10)
    for kfac_error, ekfac_error in zip(errors["kfac"], errors["ekfac"]):
        assert ekfac_error < kfac_error, errors


@pytest.mark.parametrize("cls", [KFAC, EKFAC], ids=lambda cls: cls.name)
def test_the_last_layer_alone_keeps_its_block_and_zeroes_the_rest(mlp, cls):
    """Blocks are independent, so the last layer's answer with ``layers: last`` is its answer with every layer."""
    problem = mlp.problem
    names = list(problem.params)
    last = problem.params[names[-2]].numel() + problem.params[names[-1]].numel()
    vectors = problem.test_gradients([0, 1, 2])
    answers = {}
    for layers in ("all", "last"):
        estimator = cls(KFACConfig(layers=layers))
        estimator.prepare(problem)
        answers[layers] = estimator.ihvp(vectors)
    torch.testing.assert_close(answers["last"][:, -last:], answers["all"][:, -last:], rtol=1e-10, atol=0)
    assert bool((answers["last"][:, :-last] == 0).all())
    assert bool(answers["last"][:, -last:].abs().max() > 0)


def test_the_fisher_types_differ_and_the_empirical_one_is_the_observed_gradients(mlp):
    """``type-2`` and ``empirical`` give different factors; ``mc`` depends on its seed and only on it."""
    problem = mlp.problem
    vectors = problem.test_gradients([0, 1])
    answers = {}
    for fisher, seed in (("type-2", 0), ("empirical", 0), ("mc", 0), ("mc", 0), ("mc", 1)):
        estimator = KFAC(KFACConfig(fisher=fisher, seed=seed))
        estimator.prepare(problem)
        answers.setdefault(fisher, []).append(estimator.ihvp(vectors))
    assert not torch.allclose(answers["type-2"][0], answers["empirical"][0], rtol=1e-3)
    assert torch.equal(answers["mc"][0], answers["mc"][1])
    assert not torch.equal(answers["mc"][0], answers["mc"][2])


def test_a_problem_without_its_network_is_a_recorded_failure(mlp):
    bare = dataclasses.replace(mlp.problem, network=None)
    with pytest.raises(EstimatorFailed, match="no nn.Module"):
        KFAC().prepare(bare)


def test_parameters_outside_linear_and_conv_layers_are_a_recorded_failure():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=generator)
    module = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).to(torch.float64)
    problem = Problem.from_module(
        module, nn.CrossEntropyLoss(reduction="none"), x[:8], y[:8], x[8:], y[8:], loss_module=nn.CrossEntropyLoss()
    )
    with pytest.raises(EstimatorFailed, match="kfac factors Linear and Conv2d layers only"):
        KFAC().prepare(problem)


def test_network_at_hands_out_a_trainable_copy_at_the_optimum(mlp):
    problem = mlp.problem
    network = problem.network_at()
    for name, parameter in network.module.named_parameters():
        assert parameter.requires_grad and torch.equal(parameter, problem.params[name])
    assert network.module is not problem.network.module
    outputs = network.module(problem.x_test)
    torch.testing.assert_close(outputs, problem.model(problem.params, problem.x_test), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fisher": "true"}, r"kfac.fisher 'true' \(choices: empirical, mc, type-2\)"),
        ({"approximation": "both"}, r"kfac.approximation 'both' \(choices: expand, reduce\)"),
        ({"layers": "first"}, r"kfac.layers 'first' \(choices: all, last\)"),
        ({"damping": -1.0}, "damping"),
        ({"batch_size": 0}, "batch_size"),
    ],
    ids=["fisher", "approximation", "layers", "damping-negative", "batch-size-zero"],
)
def test_kfac_rejects_a_bad_config_naming_the_value(values, message):
    with pytest.raises((UnknownNameError, UsageError), match=message):
        configuration.build(KFACConfig, values, "kfac")
