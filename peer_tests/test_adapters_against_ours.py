"""The peer adapters (``benchmark.peers.adapters``) against the harness's own estimators at the same settings, on Iris
and on a tiny synthetic problem: Pearson correlation of the scores over the training points, worst over the test
points, and their scale.

Needs the peers, which live in an environment of their own (``benchmark/peers/README.md``), so the ordinary test run
does not collect this directory (``testpaths = ["tests"]``); run it from the repository root in that environment::

    .peers/bin/python -m pytest peer_tests

(``python -m`` puts the repository first on ``sys.path``, ahead of the top-level ``examples`` and ``tests`` packages
that dattri's and kronfluence's wheels install). A peer that is not importable skips its tests; the same adapters
without any peer are tested by ``tests/test_peer_adapters.py`` in the ordinary run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from benchmark import BuildContext, Problem, Recipe
from benchmark.common.cache import Cache
from benchmark.contracts.plugins import Registry, plugin_manager
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.trajectory import TrainingRun
from benchmark.peers.speed_vs_peers import pearson_rows

THRESHOLD = 0.99
TEST_POINTS = 10


@pytest.fixture(scope="module", autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The harness's cache and results under a temporary directory; one torch thread."""
    sandbox = tmp_path_factory.mktemp("bench-env")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_CACHE_DIR", str(sandbox / "cache"))
        patch.setenv("BENCH_RESULTS_DIR", str(sandbox / "results"))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry(isolated: None) -> Registry:
    return Registry(plugin_manager(["benchmark.peers.adapters"]))


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Problem:
    """Iris at its default configuration (the MLP trained to its optimum, with its training run)."""
    task_cls = registry.task("iris")
    cache = Cache(tmp_path_factory.mktemp("iris-cache"))
    return task_cls(task_cls.Config()).build(BuildContext("cpu", 0, cache, progress=False))


def synthetic() -> Problem:
    """A 1x5 tanh MLP on random 3-class data (160 training, 8 test points), float64, weight decay 0.01, trained by
    full-batch descent with momentum from its initialisation; with its training run (for TracIn)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(168, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(3, (168,), generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(torch.float64)
    initial = Problem.from_module(
        module, cross_entropy, x[:160], y[:160], x[160:], y[160:], 0.01, loss_module=nn.CrossEntropyLoss()
    )
    phases = [Recipe(steps=1500, lr=0.3, momentum=0.9, seed=1), Recipe(steps=500, lr=0.05, momentum=0.9, seed=2)]
    run = TrainingRun(initial, phases)
    optimum = run.checkpoints(1).thetas[-1]
    return dataclasses.replace(initial, params=initial.unflatten(optimum), training_run=run)


@pytest.fixture(scope="module", params=["iris", "synthetic"])
def problem(request: pytest.FixtureRequest) -> Problem:
    problem = request.getfixturevalue("iris") if request.param == "iris" else synthetic()
    # the influence-function comparisons need H + damping I positive definite (our cg fails otherwise)
    assert float(torch.linalg.eigvalsh(problem.hessian().double())[0]) > -1e-3
    return problem


def points_of(problem: Problem) -> list[int]:
    """The highest-loss test points."""
    return torch.argsort(problem.test_losses(), descending=True)[:TEST_POINTS].tolist()


def scores(registry: Registry, name: str, problem: Problem, **options: Any) -> tuple[Tensor, Any]:
    """The estimator ``name``'s ``[m, n]`` influence on ``problem``'s test points, checked as the harness checks it."""
    if name.split("-")[0] in ("dattri", "kronfluence", "captum"):
        pytest.importorskip(name.split("-")[0])
    cls = registry.estimator(name)
    estimator = cls(cls.Config(**options))
    estimator.prepare(problem)
    out = estimator.influence(points_of(problem))
    assert out.shape == (min(TEST_POINTS, len(problem.x_test)), problem.n_train)
    assert out.dtype == problem.dtype and bool(torch.isfinite(out).all())
    return out, estimator


def agree(ours: Tensor, theirs: Tensor, threshold: float = THRESHOLD) -> float:
    """The worst Pearson correlation over the test points, asserted at least ``threshold``; returns it."""
    worst = float(pearson_rows(ours, theirs).min())
    assert worst >= threshold, worst
    return worst


def same_scale(ours: Tensor, theirs: Tensor, rtol: float) -> None:
    """Same values up to ``rtol`` relative to the largest score: the conversion's sign and scale."""
    error = float((theirs - ours).abs().max() / ours.abs().max())
    assert error <= rtol, error


# -- influence functions -----------------------------------------------------------------------------------------------
def test_dattri_explicit_is_exact(registry, problem):
    ours, exact = scores(registry, "exact", problem, damping=0.001)
    theirs, explicit = scores(registry, "dattri-explicit", problem, damping=0.001)
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-4)  # dattri's score buffer is float32
    vectors = problem.test_gradients(points_of(problem)[:3])
    same_scale(exact.ihvp(vectors), explicit.ihvp(vectors), 1e-6)  # dattri adds its regularization in float32


def test_dattri_cg_is_our_cg(registry, problem):
    ours, cg = scores(registry, "cg", problem, damping=0.001)
    # dattri runs every iteration it is given: enough for the Krylov space to span the problem's parameters
    theirs, dattri_cg = scores(registry, "dattri-cg", problem, damping=0.001, max_iter=2 * problem.n_params)
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-3)
    vectors = problem.test_gradients(points_of(problem)[:3])
    same_scale(cg.ihvp(vectors), dattri_cg.ihvp(vectors), 1e-3)


def test_dattri_lissa_converges_to_exact(registry, problem):
    """At a damping where the recursion converges within its depth (at Iris's 0.001 it needs about ``scaling /
    damping`` = 50,000 steps): its fixed point is exact's solve."""
    ours, _ = scores(registry, "exact", problem, damping=0.1)
    theirs, _ = scores(
        registry, "dattri-lissa", problem, damping=0.1, scaling=50.0, batch_size=32, recursion_depth=2000
    )
    agree(ours, theirs)


# -- K-FAC and EK-FAC --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kronfluence_is_our_kfac_on_the_empirical_fisher(registry, problem, method, caplog):
    """On the observed labels' Fisher both are deterministic and factor the same matrix (Linear layers only: on a
    convolution kronfluence's K-FAC averages over positions where ours sums, ``leaderboards/agreement.md``)."""
    ours, _ = scores(registry, method, problem, damping=0.001, fisher="empirical")
    caplog.set_level(logging.INFO)  # bench logs at INFO
    theirs, _ = scores(registry, f"kronfluence-{method}", problem, damping=0.001, fisher="empirical")
    assert logging.getLogger().level == logging.INFO  # kronfluence raises it; the adapter puts it back
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-6)


def test_kronfluence_sampled_fisher_keeps_the_sign(registry, problem):
    """kronfluence's default, labels sampled once per example, against our ``type-2`` expectation: a noisy estimate
    of the same matrix, so the same sign and order, not the same values."""
    ours, _ = scores(registry, "ekfac", problem, damping=0.001)
    theirs, _ = scores(registry, "kronfluence-ekfac", problem, damping=0.001)
    agree(ours, theirs, threshold=0.5)


# -- TracIn and TRAK ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dattri-tracin", "captum-tracin"])
def test_peer_tracin_is_our_tracin(registry, problem, name):
    ours, _ = scores(registry, "tracin", problem, checkpoints=4)
    theirs, estimator = scores(registry, name, problem, checkpoints=4)
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-5)
    assert estimator.models["kind"] == "trajectory" and estimator.models["count"] == 4


def trak_by_hand(problem: Problem, regularization: float) -> Tensor:
    """TRAK on the optimum, unprojected, written out: ``(1 - p_z) phi_z^T (Phi^T Phi + lambda I)^-1 phi_i (1 - p_i)``
    with ``phi`` the gradient of the margin ``logit_y - logsumexp_{c != y} logit_c``."""
    module = problem.network_at().module

    def margin(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(module, params, (x.unsqueeze(0),))[0]
        correct = torch.arange(len(logits)) == y
        return (logits * correct).sum() - torch.logsumexp(torch.where(correct, float("-inf"), logits), dim=0)

    def features(x: Tensor, y: Tensor) -> Tensor:
        gradients = vmap(grad(margin), in_dims=(None, 0, 0))(problem.params, x, y)
        return torch.cat([gradients[name].reshape(len(x), -1) for name in problem.params], dim=1)

    def one_minus_p(x: Tensor, y: Tensor) -> Tensor:
        return 1 - torch.sigmoid(vmap(margin, in_dims=(None, 0, 0))(problem.params, x, y))

    tests = points_of(problem)
    x, y = problem.x_test[tests], problem.y_test[tests]
    train = features(problem.x_train, problem.y_train)
    kernel = train.T @ train + regularization * torch.eye(problem.n_params, dtype=problem.dtype)
    tau = features(x, y) @ torch.linalg.solve(kernel, train.T) * one_minus_p(problem.x_train, problem.y_train)
    return tau * one_minus_p(x, y).unsqueeze(1)


def test_dattri_trak_is_trak_written_out(registry, problem):
    regularization = 0.01 * problem.n_train  # Phi^T Phi is singular without
    theirs, estimator = scores(registry, "dattri-trak", problem, regularization=regularization)
    assert estimator.diagnostics["projected"] is False
    ours = trak_by_hand(problem, regularization)
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-4)


def test_dattri_trak_is_our_trak_unprojected(registry, problem):
    """Unprojected (dattri's random projection is not ``traker``'s, which the harness's ``trak`` reproduces, so
    projected scores agree only in distribution) and at the same ``regularization``: the same scores."""
    options = {"projection_dim": 2048, "regularization": 0.01 * problem.n_train}
    ours, _ = scores(registry, "trak", problem, **options)
    theirs, _ = scores(registry, "dattri-trak", problem, **options)
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-4)


def test_dattri_trak_on_an_ensemble_is_our_trak(registry, iris):
    """Two models (the optimum and one trained like it from another initialisation, the harness's ensemble): dattri
    averages the scores and the out-to-loss weights separately, as ``traker`` and the harness's ``trak`` do."""
    options = {"projection_dim": 2048, "regularization": 0.01 * iris.n_train, "models": 2}
    ours, _ = scores(registry, "trak", iris, **options)
    theirs, estimator = scores(registry, "dattri-trak", iris, **options)
    assert estimator.models["kind"] == "ensemble" and estimator.models["count"] == 2
    agree(ours, theirs)
    same_scale(ours, theirs, 1e-4)


def test_dattri_trak_on_a_singular_kernel_names_the_fix(registry, iris):
    """Unprojected at dattri's regularization 0 on Iris: the margin gradients span 20 of the 43 dimensions."""
    pytest.importorskip("dattri")
    from benchmark import EstimatorFailed

    cls = registry.estimator("dattri-trak")
    estimator = cls(cls.Config())
    assert iris.n_params <= estimator.config.projection_dim
    with pytest.raises(EstimatorFailed, match="regularization above 0"):
        estimator.prepare(iris)
