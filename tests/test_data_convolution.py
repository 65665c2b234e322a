"""``data_convolutions``: the same first and second derivatives as torch's own convolution, in float64, for every
argument form that ``conv2d`` takes, and no change where the convolution's input needs a gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark.numerics.data_convolution import DataConvolution, data_convolutions

CASES = {
    "plain": dict(),
    "stride-2": dict(stride=2),
    "padding-dilation": dict(padding=(2, 1), dilation=(2, 1)),
    "groups-2": dict(groups=2),
    "no-bias": dict(bias=False),
}


def _setup(case: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    generator = torch.Generator().manual_seed(seed)
    options = dict(case)
    has_bias = options.pop("bias", True)
    groups = options.get("groups", 1)
    x = torch.randn(5, 4, 9, 8, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(6, generator=generator, dtype=torch.float64).requires_grad_() if has_bias else None
    return x, weight, bias, options


def _hvp(x, weight, bias, options, vectors, mode: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The gradient of a non-quadratic loss of ``conv2d`` and the gradient of its dot product with ``vectors``."""
    leaves = [weight] + ([bias] if bias is not None else [])
    if mode:
        with data_convolutions():
            out = F.conv2d(x, weight, bias, **options)
    else:
        out = F.conv2d(x, weight, bias, **options)
    loss = torch.tanh(out).pow(2).sum() + out.sin().mean()
    gradient = torch.autograd.grad(loss, leaves, create_graph=True)
    second = torch.autograd.grad(gradient, leaves, grad_outputs=vectors[: len(leaves)])
    return [g.detach() for g in gradient], list(second), out


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_second_derivatives_equal_torchs_convolution(case: str):
    x, weight, bias, options = _setup(CASES[case])
    generator = torch.Generator().manual_seed(1)
    vectors = [
        torch.randn(weight.shape, generator=generator, dtype=torch.float64),
        torch.randn(6, generator=generator, dtype=torch.float64),
    ]
    gradient, second, out = _hvp(x, weight, bias, options, vectors, mode=True)
    expected_gradient, expected_second, expected_out = _hvp(x, weight, bias, options, vectors, mode=False)
    assert out.grad_fn.name().startswith("DataConvolution")
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for actual, expected in zip(gradient + second, expected_gradient + expected_second):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert any(float(s.abs().max()) > 1e-3 for s in second)  # a real second derivative, not zeros on both sides


def test_the_module_path_of_nn_conv2d_is_replaced_and_gradcheck_passes():
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    with data_convolutions():
        assert conv(x).grad_fn.name().startswith("DataConvolution")

    def function(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return DataConvolution.apply(x, weight, bias, (2, 2), (1, 1), (1, 1), 1).tanh()

    weight = conv.weight.detach().clone().requires_grad_()
    bias = conv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(function, (weight, bias))


def test_inputs_that_need_a_gradient_keep_torchs_convolution():
    """A hidden layer's convolution needs its input gradient, which only the native double backward gives."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    with data_convolutions():
        out = F.conv2d(x, weight)
        same = F.conv2d(x.detach(), weight.detach())  # nothing to differentiate: native as well
    assert out.grad_fn.name() == "ConvolutionBackward0"
    assert same.grad_fn is None
