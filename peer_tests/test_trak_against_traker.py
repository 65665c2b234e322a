"""Our ``trak`` against ``traker`` 0.3.2 (the TRAK authors' library) on a small MLP where both run on the CPU: the same
projection matrix (ours draws ``traker``'s ``BasicProjector``'s), so the scores agree to float32 rounding, up to the
constant by which ``traker`` rescales ``(Phi^T Phi)^-1`` (``benchmark/peers/attribution_agreement.py`` says why, and
compares ensembles, where that rescaling weights the models unequally).

Run in the peers' environment: ``.peers/bin/python -m pytest peer_tests`` (see ``test_adapters_against_ours.py``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from benchmark import Problem, Recipe
from benchmark.numerics import training
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.projection import projection_matrix
from benchmark.numerics.trajectory import TrainingRun
from benchmark.peers.attribution_agreement import traker_scores
from benchmark.peers.speed_vs_peers import pearson_rows
from estimators.trak import TRAK, TRAKConfig

pytest.importorskip("trak")


RECIPE = Recipe(steps=300, lr=0.5)


def make_module(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))


def initialize(seed: int) -> torch.Tensor:
    return nn.utils.parameters_to_vector(make_module(seed).parameters()).detach()


def mlp_problem() -> tuple[Problem, nn.Module]:
    """A 10-32-4 tanh MLP (484 parameters) trained on 300 synthetic examples, float32, with a training run that trains
    an ensemble like it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(320, 10, generator=generator)
    y = (x[:, :4] + 0.5 * torch.randn(320, 4, generator=generator)).argmax(dim=1)
    module = make_module(0)
    problem = Problem.from_module(
        module, cross_entropy, x[:300], y[:300], x[300:], y[300:], 0.001, loss_module=nn.CrossEntropyLoss()
    )
    theta = training.train(problem, RECIPE)
    run = TrainingRun(problem, [RECIPE], initialize=initialize, optimum=theta)
    trained = dataclasses.replace(problem, params=problem.unflatten(theta), training_run=run)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(trained.params[name])
    return trained, module


def test_our_projection_is_trakers_basic_projector():
    from trak.projectors import BasicProjector, ProjectionType

    gradients = torch.randn(7, 484)
    projector = BasicProjector(
        grad_dim=484, proj_dim=250, seed=3, proj_type=ProjectionType.rademacher, device="cpu", model_id=0
    )
    for model_id in (0, 2):
        theirs = projector.project(gradients, model_id=model_id)
        ours = gradients @ projection_matrix(484, 250, 3, model_id, "rademacher")
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_trak_agrees_with_traker_on_the_same_model():
    problem, module = mlp_problem()
    test = torch.arange(10)
    estimator = TRAK(TRAKConfig(projection_dim=128))
    estimator.prepare(problem)
    ours = estimator.influence(test).double()
    assert estimator.diagnostics["gram_ranks"] == [128]
    theirs = traker_scores(module, problem, test, problem.theta.unsqueeze(0), 128).double().T
    with torch.no_grad():
        p = torch.softmax(problem.model(problem.params, problem.x_test[test]), 1).gather(1, problem.y_test[test, None])
    aligned = theirs * (1 - p.double())
    assert float(pearson_rows(ours, aligned).min()) > 0.9999
    ratio = aligned / ours
    assert float((ratio / ratio.median()).sub(1).abs().median()) < 1e-3  # one constant: traker's rescaling


def test_an_ensemble_agrees_with_traker_with_its_rescaling_and_not_without():
    """traker divides each model's (Phi^T Phi)^-1 by its mean absolute entry: with ``traker_rescaling`` ours does the
    same and agrees; the paper's plain average (our default) weights the models otherwise."""
    problem, module = mlp_problem()
    test = torch.arange(10)
    theirs = traker_scores(module, problem, test, problem.ensemble(3).thetas, 128).double().T
    with torch.no_grad():
        p = torch.softmax(problem.model(problem.params, problem.x_test[test]), 1).gather(1, problem.y_test[test, None])
    aligned = theirs * (1 - p.double())
    agreement = {}
    for rescaling in (True, False):
        estimator = TRAK(TRAKConfig(projection_dim=128, models=3, traker_rescaling=rescaling))
        estimator.prepare(problem)
        agreement[rescaling] = float(pearson_rows(estimator.influence(test).double(), aligned).min())
    assert agreement[True] > 0.9999
    assert agreement[False] < agreement[True]
