"""The ensemble half of the training-run contract (models trained like the optimum from other seeds, cached one by one)
and the estimators on it and on random projections: ``trak`` against its formula computed directly (per-example
autograd, a dense inverse), the projection matrix against ``traker``'s drawing rule, ``tracin`` with a projection."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from benchmark import BuildContext, Problem, Recipe
from benchmark.common import config as configuration
from benchmark.common.cache import Cache
from benchmark.common.errors import EstimatorFailed, UnknownNameError
from benchmark.contracts import testing as conformance
from benchmark.numerics import training
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.projection import projection_matrix
from benchmark.numerics.trajectory import TrainingRun
from estimators.tracin import TracIn, TracInConfig
from estimators.trak import TRAK, TRAKConfig
from tasks.iris import Iris, IrisConfig, mlp
from tasks.vision import Mnist, VisionConfig
from tests.conftest import assert_one_line_error

PHASES = [
    Recipe(steps=40, lr=0.1, batch_size=8, momentum=0.9, seed=3),
    Recipe(steps=20, lr=0.01, batch_size=8, momentum=0.9, seed=4),
]


def make_module(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mlp(depth=1, width=5, activation="tanh").to(torch.float64)


def initialize(seed: int) -> torch.Tensor:
    return nn.utils.parameters_to_vector(make_module(seed).parameters()).detach()


def trained_problem(cache: Cache | None = None) -> tuple[Problem, nn.Module]:
    """A 1x5 tanh MLP (43 parameters) on 3-class data (40 training, 6 test examples), float64, trained with
    :data:`PHASES`, with its training run able to train an ensemble."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(46, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(3, (46,), generator=generator)
    module = make_module(0)
    problem = Problem.from_module(
        module, cross_entropy, x[:40], y[:40], x[40:], y[40:], 0.01, loss_module=nn.CrossEntropyLoss()
    )
    theta = problem.theta
    for phase in PHASES:
        theta = training.train(dataclasses.replace(problem, params=problem.unflatten(theta)), phase)
    key = None if cache is None else {"task": "test-trak"}
    run = TrainingRun(problem, PHASES, cache, key, initialize, seed=0, optimum=theta)
    return dataclasses.replace(problem, params=problem.unflatten(theta), training_run=run), module


# -- the ensemble ----------------------------------------------------------------------------------------------------
def test_an_ensemble_member_is_the_run_again_from_its_seeds_initialisation():
    problem, _ = trained_problem()
    ensemble = problem.ensemble(2)
    assert ensemble.seeds == [0, 10_000] and ensemble.subset_fraction == 1.0
    torch.testing.assert_close(ensemble.thetas[0], problem.theta, rtol=0, atol=0)  # member 0: the optimum itself
    theta = initialize(10_000)
    for phase in PHASES:
        start = dataclasses.replace(problem, params=problem.unflatten(theta))
        theta = training.train(start, dataclasses.replace(phase, seed=phase.seed + 10_000))
    torch.testing.assert_close(ensemble.thetas[1], theta, rtol=0, atol=0)
    assert not torch.allclose(ensemble.thetas[1], problem.theta)
    assert ensemble.seconds > 0 and ensemble.from_cache == 1  # only the optimum was not trained now


def test_subset_members_are_all_trained_each_on_its_own_share(monkeypatch):
    problem, _ = trained_problem()
    seen: list[torch.Tensor] = []
    descend = training.descend

    def spy(problem, thetas, weights, recipe, *args, **kwargs):
        seen.append(weights.clone())
        return descend(problem, thetas, weights, recipe, *args, **kwargs)

    run = problem.training_run
    assert isinstance(run, TrainingRun)
    run.descend = spy
    ensemble = problem.ensemble(2, subset_fraction=0.5)
    assert ensemble.seeds == [0, 10_000] and ensemble.from_cache == 0
    assert not torch.allclose(ensemble.thetas[0], problem.theta)  # member 0 trained on a subset, not the optimum
    masks = [weights[0] for weights in seen[:: len(PHASES)]]
    for mask in masks:
        assert int((mask > 0).sum()) == 20 and set(mask.unique().tolist()) == {0.0, 2.0}  # weights 1 / fraction
    assert not torch.equal(masks[0], masks[1])
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"subset_fraction={fraction} must be in"):
            problem.ensemble(2, subset_fraction=fraction)


def test_ensemble_members_are_cached_one_by_one(tmp_path):
    problem, _ = trained_problem(Cache(tmp_path))
    two = problem.ensemble(2)
    three = problem.ensemble(3)
    assert three.from_cache == 2  # the optimum and the member the two-model ensemble trained
    torch.testing.assert_close(three.thetas[:2], two.thetas, rtol=0, atol=0)
    assert three.seconds > two.seconds  # the cached member's cost is kept and counted again
    assert two.seconds_now == pytest.approx(two.seconds) and three.seconds_now == pytest.approx(
        three.seconds - two.seconds
    )
    assert len(list((tmp_path / "ensembles").glob("*.pt"))) == 2


def test_no_ensemble_without_an_initialisation_and_trak_records_the_reason():
    problem, _ = trained_problem()
    run = problem.training_run
    assert isinstance(run, TrainingRun)
    bare = dataclasses.replace(problem, training_run=TrainingRun(run.initial, run.phases, optimum=problem.theta))
    with pytest.raises(NotImplementedError, match=r"no initialisation for other seeds \(Task.initial_parameters\)"):
        bare.ensemble(2)
    with pytest.raises(EstimatorFailed, match="trak needs an ensemble of 2 models: the task states no initialisation"):
        TRAK(TRAKConfig(models=2)).prepare(bare)
    with pytest.raises(EstimatorFailed, match="trak needs an ensemble of 2 models: this problem has no training run"):
        TRAK(TRAKConfig(models=2)).prepare(dataclasses.replace(problem, training_run=None))
    TRAK(TRAKConfig(models=1)).prepare(dataclasses.replace(problem, training_run=None))  # one model needs no run


def test_task_trained_binds_the_tasks_initialisation_and_trainer(tmp_path):
    task = Iris(IrisConfig(train_steps=50))
    problem = task.build(BuildContext(device="cpu", seed=2, cache=Cache(tmp_path), progress=False))
    run = problem.training_run
    assert isinstance(run, TrainingRun) and run.seed == 2
    torch.testing.assert_close(run.initial.theta, task.initial_parameters(2), rtol=0, atol=0)
    assert run.optimum is not None and torch.equal(run.optimum, problem.theta)
    assert run.descend == task.descend  # Iris's batched backpropagation trains the members too
    ensemble = problem.ensemble(2)
    assert ensemble.seeds == [2, 10_002]
    assert not torch.allclose(task.initial_parameters(10_002), task.initial_parameters(2))


# -- the projection --------------------------------------------------------------------------------------------------
def test_projection_matrix_follows_traker_basic_projectors_drawing_rule():
    matrix = projection_matrix(7, 250, seed=5, model_id=3, kind="rademacher")
    assert matrix.shape == (7, 250) and matrix.dtype == torch.float32
    assert set(matrix.unique().tolist()) == {-1.0, 1.0}
    for block, width in ((0, 100), (1, 100), (2, 50)):
        generator = torch.Generator().manual_seed(5 + 1000 * block + 100_000 * 3)
        expected = torch.empty(7, 100).bernoulli_(0.5, generator=generator) * 2 - 1
        torch.testing.assert_close(matrix[:, 100 * block : 100 * block + width], expected[:, :width], rtol=0, atol=0)
    normal = projection_matrix(7, 30, seed=5, model_id=0, kind="normal")
    expected = torch.empty(7, 30).normal_(generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(normal, expected, rtol=0, atol=0)
    assert not torch.equal(projection_matrix(7, 30, 5, 1, "normal"), normal)


# -- trak ------------------------------------------------------------------------------------------------------------
def margin_gradient(problem: Problem, module: nn.Module, theta: torch.Tensor, x, y) -> tuple[torch.Tensor, float]:
    """One example's gradient of ``log(p / (1 - p))`` by autograd on the softmax, and ``p``."""
    params = {name: value.clone().requires_grad_() for name, value in problem.unflatten(theta).items()}
    p = torch.softmax(functional_call(module, params, (x[None],)), dim=1)[0, y]
    margin = torch.log(p / (1 - p))
    gradients = torch.autograd.grad(margin, list(params.values()))
    return torch.cat([g.reshape(-1) for g in gradients]), float(p.detach())


def direct_trak(
    problem, module, thetas, tests, projection_dim: int | None, traker_rescaling: bool = False
) -> torch.Tensor:
    scores = torch.zeros(len(tests), problem.n_train, dtype=torch.float64)
    out_to_loss = torch.zeros(problem.n_train, dtype=torch.float64)
    for model_id, theta in enumerate(thetas):
        matrix = (
            torch.eye(problem.n_params, dtype=torch.float64)
            if projection_dim is None
            else projection_matrix(problem.n_params, projection_dim, 0, model_id, "rademacher").double()
        )
        train = [margin_gradient(problem, module, theta, problem.x_train[i], problem.y_train[i]) for i in range(40)]
        features = torch.stack([g for g, _ in train]) @ matrix
        out_to_loss += torch.tensor([1 - p for _, p in train], dtype=torch.float64)
        target = torch.stack(
            [margin_gradient(problem, module, theta, problem.x_test[t], problem.y_test[t])[0] for t in tests]
        )
        gram = features.T @ features
        inverse = torch.linalg.pinv(gram, hermitian=True, rtol=len(gram) * torch.finfo(torch.float64).eps)
        if traker_rescaling:
            inverse = inverse / inverse.abs().mean()
        scores += (target @ matrix) @ inverse @ features.T
    scores = scores / len(thetas) * out_to_loss / len(thetas)
    p_test = torch.tensor(
        [margin_gradient(problem, module, problem.theta, problem.x_test[t], problem.y_test[t])[1] for t in tests],
        dtype=torch.float64,
    )
    return scores * (1 - p_test).unsqueeze(1)


@pytest.mark.parametrize(
    ("projection_dim", "models"),
    [(20, 1), (20, 3), (2048, 1)],
    ids=["projected", "projected-ensemble", "unprojected-pseudo-inverse"],
)
def test_trak_is_its_formula_computed_directly(projection_dim, models):
    problem, module = trained_problem()
    estimator = TRAK(TRAKConfig(projection_dim=projection_dim, models=models))
    estimator.prepare(problem)
    scores = estimator.influence([0, 4])
    thetas = problem.ensemble(models).thetas if models > 1 else problem.theta.unsqueeze(0)
    expected = direct_trak(problem, module, thetas, [0, 4], projection_dim if projection_dim < 43 else None)
    torch.testing.assert_close(scores, expected, rtol=1e-7, atol=1e-12)
    assert estimator.diagnostics["projected"] is (projection_dim < 43)
    if projection_dim >= 43:  # the margin ignores a constant added to every logit: 5 + 1 directions of the last layer
        assert estimator.diagnostics["gram_ranks"] == [43 - 6]
    if models > 1:
        assert estimator.models["kind"] == "ensemble" and estimator.models["count"] == models
        assert estimator.models["seconds"] > 0
    else:
        assert estimator.models == {}


def test_trak_with_trakers_rescaling_weights_each_model_by_its_inverses_mean_absolute_entry():
    problem, module = trained_problem()
    estimator = TRAK(TRAKConfig(projection_dim=20, models=3, traker_rescaling=True))
    estimator.prepare(problem)
    expected = direct_trak(problem, module, problem.ensemble(3).thetas, [0, 4], 20, traker_rescaling=True)
    torch.testing.assert_close(estimator.influence([0, 4]), expected, rtol=1e-7, atol=1e-12)
    plain = TRAK(TRAKConfig(projection_dim=20, models=3))
    plain.prepare(problem)
    assert not torch.allclose(plain.influence([0, 4]), expected, rtol=1e-3)


def test_trak_needs_a_classification_loss():
    problem, _ = trained_problem()
    with pytest.raises(EstimatorFailed, match="CrossEntropyLoss or BCEWithLogitsLoss problem \\(its loss: MSELoss\\)"):
        TRAK().prepare(dataclasses.replace(problem, network=dataclasses.replace(problem.network, loss=nn.MSELoss())))


def test_trak_on_logistic_regression_uses_the_binary_margin():
    problem = conformance.logistic_regression_problem()
    estimator = TRAK()
    estimator.prepare(problem)
    scores = estimator.influence([0])[0]
    x = torch.cat([problem.x_train, torch.ones(problem.n_train, 1, dtype=torch.float64)], dim=1)
    sign = 2 * problem.y_train[:, 0] - 1
    features = sign.unsqueeze(1) * x  # the gradient of (2y - 1) (w^T x + b)
    p = torch.sigmoid(sign * (problem.x_train @ problem.params["weight"][0] + problem.params["bias"][0]))
    x_test = torch.cat([problem.x_test[:1], torch.ones(1, 1, dtype=torch.float64)], dim=1)
    sign_test = 2 * problem.y_test[0, 0] - 1
    logit = problem.x_test[0] @ problem.params["weight"][0] + problem.params["bias"][0]
    p_test = torch.sigmoid(sign_test * logit)
    # columns in the model's parameter order, weight before bias, as x's
    expected = (sign_test * x_test) @ torch.linalg.inv(features.T @ features) @ features.T * (1 - p) * (1 - p_test)
    torch.testing.assert_close(scores, expected[0], rtol=1e-8, atol=1e-12)


# -- tracin with a projection ---------------------------------------------------------------------------------------
def test_tracin_with_a_projection_is_the_projected_gradient_dot():
    problem, _ = trained_problem()
    exact = TracIn(TracInConfig(checkpoints=3))
    exact.prepare(problem)
    projected = TracIn(TracInConfig(checkpoints=3, projection_dim=10, seed=7))
    projected.prepare(problem)
    trajectory = problem.trajectory(3)
    expected = torch.zeros(2, problem.n_train, dtype=torch.float64)
    for index, (theta, lr) in enumerate(zip(trajectory.thetas, trajectory.lrs)):
        checkpoint = dataclasses.replace(problem, params=problem.unflatten(theta))
        matrix = projection_matrix(problem.n_params, 10, 7, index, "rademacher").double() / 10**0.5
        expected += (
            lr * (checkpoint.test_gradients([0, 4]) @ matrix) @ (checkpoint.train_gradients(range(40)) @ matrix).T
        )
    torch.testing.assert_close(projected.influence([0, 4]), expected / problem.n_train, rtol=1e-10, atol=1e-14)
    # at k >= P nothing is projected: the exact products
    full = TracIn(TracInConfig(checkpoints=3, projection_dim=43))
    full.prepare(problem)
    torch.testing.assert_close(full.influence([0, 4]), exact.influence([0, 4]), rtol=0, atol=0)


# -- end to end --------------------------------------------------------------------------------------------------------
def test_bench_run_records_trak_with_its_ensembles_cost_apart(bench, tiny, tmp_path, read_records):
    common = ("--cache-dir", tmp_path / "cache", "--no-leaderboard", "--selection", "random")
    costs = []
    for attempt in ("first", "again"):
        results = tmp_path / attempt
        options = ("--set", "trak.models=3", "--set", "trak.projection_dim=20")
        result = bench(
            "run", "--task", "iris", "--estimators", "trak", *options, *tiny, *common, "--results-dir", results
        )
        assert result.code == 0, result.err
        (record,) = read_records(results)
        assert record["status"] == "ok", record["failure"]
        assert record["estimator"]["hyperparameters"]["models"] == 3
        assert record["diagnostics"]["estimator"]["seeds"] == [0, 10_000, 20_000]
        timings = record["timings"]
        assert timings["models_s"] > 0 and timings["prepare_s"] >= 0
        costs.append(timings["models_s"])
        assert "models" in next(line for line in result.out.splitlines() if line.startswith("| `trak`"))
    assert costs[1] == pytest.approx(costs[0])  # loaded from the cache, still reported at what it cost
    # a larger ensemble trains only the member it adds: its own preparation excludes that training, not the cached
    results = tmp_path / "grown"
    options = ("--set", "trak.models=4", "--set", "trak.projection_dim=20")
    result = bench("run", "--task", "iris", "--estimators", "trak", *options, *tiny, *common, "--results-dir", results)
    assert result.code == 0, result.err
    (record,) = read_records(results)
    assert record["timings"]["models_s"] > costs[0] and 0 <= record["timings"]["prepare_s"] < costs[0]


def test_the_vision_tasks_state_their_initialisation(tmp_path):
    """``initial_parameters(seed)`` is the parameters the task trains from for that seed (the start of its training
    run), in the problem's order; another seed draws others."""
    task = Mnist(VisionConfig(preset="smoke", train_steps=5, polish_steps=0, lbfgs_steps=0))
    problem = task.build(BuildContext(device="cpu", seed=1, cache=Cache(tmp_path), progress=False))
    run = problem.training_run
    assert isinstance(run, TrainingRun) and run.seed == 1 and run.initialize is not None
    torch.testing.assert_close(run.initial.theta, task.initial_parameters(1), rtol=0, atol=0)
    assert not torch.equal(task.initial_parameters(10_001), task.initial_parameters(1))


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_bad_trak_and_tracin_settings_are_named_with_their_choices(bench, tiny, tmp_path):
    with pytest.raises(UnknownNameError, match=r"trak.projection 'gaussian' \(choices: normal, rademacher\)"):
        configuration.build(TRAKConfig, {"projection": "gaussian"}, "trak")
    with pytest.raises(UnknownNameError, match=r"tracin.projection 'gaussian' \(choices: normal, rademacher\)"):
        configuration.build(TracInConfig, {"projection": "gaussian"}, "tracin")
    for options, message in (
        ({"subset_fraction": 1.5}, "subset_fraction=1.5 must be at most 1"),
        ({"models": 0}, "models"),
        ({"projection_dim": 0}, "projection_dim"),
    ):
        with pytest.raises(ValueError, match=message):
            TRAKConfig(**options)
    with pytest.raises(ValueError, match="projection_dim"):
        TracInConfig(projection_dim=-1)
    result = bench(
        "run",
        "--task",
        "iris",
        "--estimators",
        "trak",
        "--set",
        "trak.models=0",
        *tiny,
        "--cache-dir",
        tmp_path / "cache",
        "--results-dir",
        tmp_path / "results",
        "--no-leaderboard",
    )
    assert_one_line_error(result, "models")
