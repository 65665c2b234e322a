"""The training-run contract (checkpoints replayed from a task's SGD phases, cached with the optimum) and the estimators
on it, against direct computations: ``tracin`` by per-example autograd at each checkpoint, ``grad-cos`` by its
formula."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from benchmark import BuildContext, Polish, Problem, Recipe
from benchmark.common.cache import Cache
from benchmark.common.errors import EstimatorFailed
from benchmark.numerics import training
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.trajectory import TrainingRun
from estimators.grad_cos import GradientCosine
from estimators.tracin import TracIn, TracInConfig
from tasks.iris import Iris, IrisConfig, mlp

PHASES = [
    Recipe(steps=20, lr=0.1, batch_size=8, momentum=0.9, seed=3),
    Recipe(steps=10, lr=0.01, batch_size=8, momentum=0.9, seed=4),
]


def initial_problem() -> tuple[Problem, nn.Module]:
    """A 1x5 tanh MLP on 3-class data at its initialisation (40 training, 6 test examples), float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(46, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(3, (46,), generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = mlp(depth=1, width=5, activation="tanh").to(torch.float64)
    problem = Problem.from_module(
        module, cross_entropy, x[:40], y[:40], x[40:], y[40:], 0.01, loss_module=nn.CrossEntropyLoss()
    )
    return problem, module


def test_checkpoints_are_the_runs_parameters_at_evenly_spaced_steps():
    problem, _ = initial_problem()
    run = TrainingRun(problem, PHASES)
    trajectory = run.checkpoints(3)
    assert trajectory.steps == [10, 20, 30] and trajectory.lrs == [0.1, 0.1, 0.01]
    assert not trajectory.from_cache and trajectory.seconds > 0
    # a checkpoint inside the first phase is that phase stopped there (same minibatches, same momentum)
    shortened = training.train(problem, dataclasses.replace(PHASES[0], steps=10))
    torch.testing.assert_close(trajectory.thetas[0], shortened, rtol=0, atol=0)
    first = training.train(problem, PHASES[0])
    torch.testing.assert_close(trajectory.thetas[1], first, rtol=0, atol=0)
    last = training.train(dataclasses.replace(problem, params=problem.unflatten(first)), PHASES[1])
    torch.testing.assert_close(trajectory.thetas[2], last, rtol=0, atol=0)
    for count in (0, 31):
        with pytest.raises(ValueError, match=f"checkpoints={count} must be between 1 and the run's 30 SGD steps"):
            run.checkpoints(count)


def test_checkpoints_are_cached_with_their_cost(tmp_path):
    problem, _ = initial_problem()
    run = TrainingRun(problem, PHASES, Cache(tmp_path), {"task": "test-tracin"})
    first = run.checkpoints(3)
    again = run.checkpoints(3)
    assert not first.from_cache and again.from_cache
    assert again.seconds == pytest.approx(first.seconds)  # the cost of producing them, not of loading them
    assert torch.equal(again.thetas, first.thetas)
    assert len(list((tmp_path / "trajectories").glob("*.pt"))) == 1


def test_tracin_is_the_learning_rate_weighted_gradient_dot_summed_over_checkpoints():
    problem, module = initial_problem()
    problem = dataclasses.replace(problem, training_run=TrainingRun(problem, PHASES))
    estimator = TracIn(TracInConfig(checkpoints=3))
    estimator.prepare(problem)
    scores = estimator.influence([0, 4])
    trajectory = problem.trajectory(3)

    def gradient(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One example's loss gradient by autograd on torch's own cross-entropy."""
        params = {name: value.clone().requires_grad_() for name, value in problem.unflatten(theta).items()}
        loss = nn.functional.cross_entropy(functional_call(module, params, (x[None],)), y[None])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    expected = torch.zeros(2, problem.n_train, dtype=torch.float64)
    for theta, lr in zip(trajectory.thetas, trajectory.lrs):
        for row, test in enumerate([0, 4]):
            g_test = gradient(theta, problem.x_test[test], problem.y_test[test])
            for i in range(problem.n_train):
                expected[row, i] += lr * g_test.dot(gradient(theta, problem.x_train[i], problem.y_train[i]))
    torch.testing.assert_close(scores, expected / problem.n_train, rtol=1e-10, atol=1e-14)
    assert estimator.models["kind"] == "trajectory" and estimator.models["count"] == 3
    assert estimator.diagnostics == {"steps": [10, 20, 30], "lrs": [0.1, 0.1, 0.01]}


def test_tracin_without_a_training_run_fails_with_the_reason():
    problem, _ = initial_problem()
    with pytest.raises(EstimatorFailed, match="tracin needs the training run's checkpoints: this problem has no"):
        TracIn().prepare(problem)
    run = dataclasses.replace(problem, training_run=TrainingRun(problem, PHASES))
    with pytest.raises(EstimatorFailed, match="checkpoints=40 must be between 1 and the run's 30 SGD steps"):
        TracIn(TracInConfig(checkpoints=40)).prepare(run)


def test_grad_cos_is_the_cosine_of_the_gradients():
    problem, _ = initial_problem()
    estimator = GradientCosine()
    estimator.prepare(problem)
    test = problem.test_gradients([1, 2])
    train = problem.train_gradients(list(range(problem.n_train)))
    expected = nn.functional.cosine_similarity(test[:, None, :], train[None, :, :], dim=2)
    torch.testing.assert_close(estimator.influence([1, 2]), expected, rtol=1e-10, atol=1e-14)


def test_grad_cos_scores_a_vanishing_training_gradient_zero():
    """A training point fitted exactly (squared error, residual 0) has a zero gradient: its cosine is undefined and
    scores 0; every other score is a cosine, within [-1, 1]."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    module = nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        y = torch.randn(12, 1, generator=generator, dtype=torch.float64)
        y[0] = module(x[0:1])[0]  # the model's own prediction: residual 0

    def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs - targets).square().sum(dim=1)

    problem = Problem.from_module(module, squared_error, x[:10], y[:10], x[10:], y[10:])
    estimator = GradientCosine()
    estimator.prepare(problem)
    scores = estimator.influence([0, 1])
    assert bool((scores[:, 0] == 0).all()) and estimator.diagnostics == {"vanishing_gradients": 1}
    assert float(scores.abs().max()) <= 1 + 1e-12 and bool((scores[:, 1:] != 0).all())


def test_a_task_keeps_the_sgd_run_through_a_later_polish_stage(tmp_path):
    """A task that trains in stages (SGD, then an L-BFGS polish cached under its own key, as the vision tasks do)
    hands out the SGD stage's run (the polish has no learning rate and no checkpoints), ending at the polished optimum
    (the first member of a whole-set ensemble)."""
    task = Iris(IrisConfig())
    context = BuildContext("cpu", 0, Cache(tmp_path), progress=False)
    problem = task.initial_problem(0)
    phases = [Recipe(steps=20, lr=0.1), Recipe(steps=10, lr=0.01)]  # Iris trains full-batch
    sgd = task.trained(problem, phases, context, key={"task": "test-stages", "stage": "sgd"})
    polished = task.trained(sgd, Polish(max_steps=5), context, key={"task": "test-stages", "stage": "polish"})
    run, before = polished.training_run, sgd.training_run
    assert isinstance(run, TrainingRun) and isinstance(before, TrainingRun)
    assert run.phases == phases and run.key == before.key and run.cache is before.cache
    assert torch.equal(run.initial.theta, problem.theta)
    assert run.optimum is not None and torch.equal(run.optimum, polished.theta)
    assert before.optimum is not None and torch.equal(before.optimum, sgd.theta)
    assert not torch.equal(polished.theta, sgd.theta)


def test_bench_run_records_tracin_with_its_checkpoints_cost_apart(bench, tiny, tmp_path, read_records):
    common = ("--cache-dir", tmp_path / "cache", "--no-leaderboard", "--selection", "random")
    costs = []
    for attempt in ("first", "again"):
        results = tmp_path / attempt
        result = bench(
            "run", "--task", "iris", "--estimators", "tracin,grad-cos", *tiny, *common, "--results-dir", results
        )
        assert result.code == 0, result.err
        records = {r["estimator"]["name"]: r for r in read_records(results)}
        assert records["tracin"]["status"] == "ok", records["tracin"]["failure"]
        assert records["grad-cos"]["status"] == "ok", records["grad-cos"]["failure"]
        assert "models_s" not in records["grad-cos"]["timings"]
        timings = records["tracin"]["timings"]
        assert timings["models_s"] > 0 and timings["prepare_s"] >= 0
        costs.append(timings["models_s"])
        assert "models" in next(line for line in result.out.splitlines() if line.startswith("| `tracin`"))
    assert costs[1] == pytest.approx(costs[0])  # loaded from the cache, still reported at what it cost
