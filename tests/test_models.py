"""The architectures of Table 1: shapes, exact parameter counts, per-example independence, functional use."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from benchmark.common.errors import UnknownNameError, UsageError
from tasks.models import MODELS, build_model, count_parameters

MNIST, CIFAR = (1, 28), (3, 32)
SHAPES = {"mnist": MNIST, "cifar": CIFAR}

PARAMETERS = {
    ("small-cnn", "mnist"): 2_616,
    ("small-cnn", "cifar"): 2_760,
    ("lenet", "mnist"): 44_426,
    ("lenet", "cifar"): 62_006,
    ("vgg13", "mnist"): 9_940_170,
    ("vgg13", "cifar"): 9_941_322,
    ("vgg14", "mnist"): 12_301_002,
    ("vgg14", "cifar"): 12_302_154,
    ("resnet18", "mnist"): 11_172_810,
    ("resnet18", "cifar"): 11_173_962,
    ("resnet50", "mnist"): 23_519_690,
    ("resnet50", "cifar"): 23_520_842,
}


def build(name: str, shape: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, *SHAPES[shape])


def images(shape: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    channels, side = SHAPES[shape]
    return torch.randn(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


def test_names() -> None:
    assert MODELS == ("small-cnn", "lenet", "vgg13", "vgg14", "resnet18", "resnet50")
    assert {name for name, _ in PARAMETERS} == set(MODELS)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", MODELS)
def test_shapes_counts_and_independence(name: str, shape: str) -> None:
    """Logits ``[2, 10]``; the pinned parameter count; example 0's output does not depend on example 1."""
    model = build(name, shape)
    assert count_parameters(model) == PARAMETERS[name, shape]
    x = images(shape)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10) and out.dtype == torch.float32 and bool(out.isfinite().all())
        changed = x.clone()
        changed[1] = 10 * torch.randn_like(x[1])
        out_changed = model(changed)
        alone = model(x[:1])
    torch.testing.assert_close(out_changed[0], out[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], out[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_changed[1], out[1])


@pytest.mark.parametrize("name", MODELS)
def test_no_batch_statistics_dropout_or_inplace(name: str) -> None:
    model = build(name, "mnist")
    for module in model.modules():
        assert not isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)), module
        assert not getattr(module, "inplace", False), module
    assert not list(model.buffers()), "running statistics or other state outside the parameters"


def test_paper_sizes() -> None:
    assert 2_300 <= PARAMETERS["small-cnn", "mnist"] <= 2_900  # paper: about 2,600
    assert 40_000 <= PARAMETERS["lenet", "mnist"] <= 48_000  # paper: about 44k


def test_vgg14_is_vgg13_plus_one_conv() -> None:
    vgg13, vgg14 = build("vgg13", "cifar"), build("vgg14", "cifar")
    convs = [sum(isinstance(m, nn.Conv2d) for m in model.modules()) for model in (vgg13, vgg14)]
    linears = [sum(isinstance(m, nn.Linear) for m in model.modules()) for model in (vgg13, vgg14)]
    assert convs == [10, 11] and linears == [3, 3]
    assert count_parameters(vgg14) - count_parameters(vgg13) == 512 * 512 * 9 + 512 + 2 * 512


def test_resnet_stem() -> None:
    model = build("resnet18", "mnist")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(model.bn1, nn.GroupNorm) and model.bn1.num_groups == 32


def test_seeded_build_is_reproducible() -> None:
    a, b = build("lenet", "cifar", seed=3), build("lenet", "cifar", seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_bad_arguments() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        build_model("resnet-18", 1, 28)
    with pytest.raises(UsageError, match="'lenet' needs images of at least 16x16 pixels, got 12x12"):
        build_model("lenet", 1, 12)
    with pytest.raises(UsageError, match="'small-cnn' needs images of at least 15x15"):
        build_model("small-cnn", 1, 14)
    with pytest.raises(UsageError, match="in_channels must be a positive integer, got 0"):
        build_model("vgg13", 0, 32)


# -- functional use, as the harness does it ----------------------------------------------------------------------------
def _functional(name: str, shape: str):
    model = build(name, shape).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = images(shape).double()
    y = torch.tensor([3, 7])

    def example_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    return model, params, x, y, example_loss


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", ["small-cnn", "lenet"])
def test_per_example_gradients(name: str, shape: str) -> None:
    """``vmap(grad)`` over two examples equals one autograd backward pass per example."""
    model, params, x, y, example_loss = _functional(name, shape)
    batched = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for key, p in model.named_parameters():
            torch.testing.assert_close(batched[key][i], p.grad, rtol=1e-10, atol=1e-12, msg=f"{key}, example {i}")
    last = list(params)[-2]  # the output layer's weight
    assert not torch.allclose(batched[last][0], batched[last][1])


@pytest.mark.parametrize("name", ["small-cnn", "lenet"])
def test_forward_over_reverse_hvp(name: str) -> None:
    """The harness's Hessian-vector product (``jvp`` of ``grad``) equals double backward."""
    model, params, x, y, example_loss = _functional(name, "mnist")
    torch.manual_seed(2)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    hvp = jvp(lambda p: grad(example_loss)(p, x[0], y[0]), (params,), (v,))[1]
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    g = torch.autograd.grad(example_loss(leaves, x[0], y[0]), list(leaves.values()), create_graph=True)
    reference = torch.autograd.grad(g, list(leaves.values()), grad_outputs=[v[k] for k in leaves])
    for key, expected in zip(leaves, reference):
        torch.testing.assert_close(hvp[key], expected, rtol=1e-8, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", ["small-cnn", "lenet"])
def test_problem_hvp_in_a_kept_graph_equals_forward_over_reverse(name: str) -> None:
    """:meth:`Problem.hvp` on one chunk (the kept graph with its data convolutions) equals the chunked
    forward-over-reverse products, which go through torch's own convolutions."""
    from benchmark import Problem
    from benchmark.numerics.losses import cross_entropy

    model, params, x, y, _ = _functional(name, "mnist")
    problem = Problem.from_module(model, cross_entropy, x, y, x, y, weight_decay=0.01)
    chunked = Problem.from_module(model, cross_entropy, x, y, x, y, weight_decay=0.01, chunk_size=1)
    vectors = torch.randn(2, problem.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kept = problem.hvp(vectors)
    assert problem._gradient_graph is not None
    torch.testing.assert_close(kept, chunked.hvp(vectors), rtol=1e-10, atol=1e-12)
