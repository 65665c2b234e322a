"""The final L-BFGS phase that takes an optimum to a stationary point (``benchmark.numerics.training.polish``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from benchmark import BuildContext, Polish, Problem
from benchmark.common.cache import Cache
from benchmark.numerics.losses import cross_entropy
from benchmark.numerics.training import polish
from tasks.vision import Mnist, VisionConfig


def small_problem(chunk_size: int | None = None) -> Problem:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(3, (96,), generator=generator)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.float64)
    return Problem.from_module(module, cross_entropy, x, y, x[:4], y[:4], weight_decay=0.01, chunk_size=chunk_size)


def test_objective_and_gradient_match_autograd_in_chunks():
    """Summed over chunks of 10 examples, the value and gradient are those of the whole objective at once."""
    problem = small_problem(chunk_size=10)
    theta = problem.theta + 0.1
    value, gradient = problem.objective_and_gradient(theta)
    reference = theta.clone().requires_grad_()
    expected = problem.objective(reference)
    (expected_gradient,) = torch.autograd.grad(expected, reference)
    assert abs(value - float(expected)) < 1e-12
    assert torch.allclose(gradient, expected_gradient, rtol=0, atol=1e-12)


def test_polish_reaches_a_stationary_point():
    problem = small_problem()
    assert problem.gradient_norm() > 0.1  # at its initialisation: far from stationary
    theta = polish(problem, Polish(max_steps=2000, gradient_tol=1e-7))
    gradient = problem.objective_and_gradient(theta)[1]
    assert float(gradient.norm()) < 1e-7
    assert float(problem.objective(theta)) < float(problem.objective(problem.theta))


def test_polish_stops_at_max_steps():
    problem = small_problem()
    few = polish(problem, Polish(max_steps=3, gradient_tol=1e-12))
    many = polish(problem, Polish(max_steps=300, gradient_tol=1e-12))
    assert problem.objective_and_gradient(few)[1].norm() > problem.objective_and_gradient(many)[1].norm()


def test_vision_optimum_is_polished_and_the_sgd_optimum_cached_apart(tmp_path):
    """With L-BFGS the smoke optimum's gradient norm falls by orders of magnitude; without it (``lbfgs_steps=0``)
    the SGD optimum is the one the polished run started from, read from the cache rather than trained again."""
    cache = Cache(tmp_path)
    context = BuildContext("cpu", 0, cache, progress=False)
    polished = Mnist(VisionConfig(preset="smoke", model="small-cnn")).build(context)
    optima = sorted((tmp_path / "optima").iterdir())
    sgd = Mnist(VisionConfig(preset="smoke", model="small-cnn", lbfgs_steps=0)).build(context)
    assert sorted((tmp_path / "optima").iterdir()) == optima  # nothing new trained: the SGD stage was cached
    assert len([p for p in optima if p.suffix == ".pt"]) == 2  # the SGD stage and the polished optimum
    assert polished.gradient_norm() < 1e-2 * sgd.gradient_norm()
    assert Mnist(VisionConfig(preset="smoke")).problem_key(0) != Mnist(
        VisionConfig(preset="smoke", lbfgs_steps=0)
    ).problem_key(0)


def test_polish_resumes_from_its_checkpoint(tmp_path):
    """Stopped after 100 iterations and called again with a budget of 150, the polish resumes from its iteration-100
    checkpoint: it ends where a 50-iteration polish from that checkpoint ends. Another key starts afresh."""
    problem = small_problem()
    cache = Cache(tmp_path)
    first = polish(problem, Polish(max_steps=100, gradient_tol=1e-14), checkpoint=(cache, {"k": 1}))
    assert len(list((tmp_path / "polish-checkpoints").glob("*.pt"))) == 2  # after iterations 50 and 100
    resumed = polish(problem, Polish(max_steps=150, gradient_tol=1e-14), checkpoint=(cache, {"k": 1}))
    from_checkpoint = polish(
        dataclasses.replace(problem, params=problem.unflatten(first)), Polish(max_steps=50, gradient_tol=1e-14)
    )
    assert torch.equal(resumed, from_checkpoint)
    assert not torch.equal(resumed, first)
    fresh = polish(problem, Polish(max_steps=100, gradient_tol=1e-14), checkpoint=(cache, {"k": 2}))
    assert torch.equal(fresh, first)  # from theta, not from key 1's checkpoints


def test_bad_lbfgs_options_are_one_line_errors(bench):
    """A negative iteration budget or a non-positive tolerance is refused naming the option, exit 2."""
    for option in ("mnist.lbfgs_steps=-1", "mnist.lbfgs_tol=0"):
        result = bench("run", "--task", "mnist", "--set", "mnist.preset=smoke", "--set", option, "--no-progress")
        assert result.code == 2, (option, result.err)
        assert len(result.err.strip().splitlines()) == 1 and option.split("=")[0].split(".")[1] in result.err


def test_vision_polish_with_more_steps_resumes_from_a_shorter_ones_checkpoints(tmp_path, caplog):
    """The checkpoints are keyed without ``lbfgs_steps`` and ``lbfgs_tol``: raising the budget from 100 to 150
    iterations resumes after iteration 100 (one checkpoint more) instead of polishing from the SGD optimum again,
    while the optimum itself is a new cache entry (its key holds the budget)."""
    cache = Cache(tmp_path)
    context = BuildContext("cpu", 0, cache, progress=False)
    short = Mnist(VisionConfig(preset="smoke", model="small-cnn", lbfgs_steps=100, lbfgs_tol=1e-12)).build(context)
    assert len(list((tmp_path / "polish-checkpoints").glob("*.pt"))) == 2  # after iterations 50 and 100
    with caplog.at_level("INFO", logger="bench"):
        longer = Mnist(VisionConfig(preset="smoke", model="small-cnn", lbfgs_steps=150, lbfgs_tol=1e-12)).build(context)
    assert "L-BFGS resumes from its checkpoint after iteration 100" in caplog.text
    assert len(list((tmp_path / "polish-checkpoints").glob("*.pt"))) == 3
    assert not torch.equal(short.theta, longer.theta)


def test_float64_polish_has_a_key_and_checkpoints_of_its_own_and_leaves_the_default_key_alone(tmp_path, caplog):
    """``lbfgs_dtype`` joins the problem key only away from its default, so the optima and ground truth cached before
    the field existed keep their keys; ``float64`` polishes (and returns) the optimum in float64, from the SGD optimum
    both share, not from the float32 polish's checkpoints."""
    default = Mnist(VisionConfig(preset="smoke")).problem_key(0)
    assert "lbfgs_dtype" not in default["config"]
    double = Mnist(VisionConfig(preset="smoke", lbfgs_dtype="float64")).problem_key(0)
    assert double["config"] == {**default["config"], "lbfgs_dtype": "float64"}

    cache = Cache(tmp_path)
    context = BuildContext("cpu", 0, cache, progress=False)
    single = Mnist(VisionConfig(preset="smoke", lbfgs_steps=50, lbfgs_tol=1e-12)).build(context)
    with caplog.at_level("INFO", logger="bench"):
        polished = Mnist(VisionConfig(preset="smoke", lbfgs_steps=50, lbfgs_tol=1e-12, lbfgs_dtype="float64")).build(
            context
        )
    assert "resumes from its checkpoint" not in caplog.text
    assert len(list((tmp_path / "polish-checkpoints").glob("*.pt"))) == 2  # one each, after iteration 50
    assert len([p for p in (tmp_path / "optima").iterdir() if p.suffix == ".pt"]) == 3  # SGD, float32, float64
    assert single.theta.dtype == torch.float32 and polished.theta.dtype == torch.float64
    assert polished.x_train.dtype == torch.float64
    assert not torch.allclose(polished.theta.float(), single.theta)


def test_bad_lbfgs_dtype_is_a_one_line_error_naming_the_choices(bench):
    result = bench("run", "--task", "mnist", "--set", "mnist.preset=smoke", "--set", "mnist.lbfgs_dtype=half")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "half" in result.err and "float32" in result.err and "float64" in result.err
