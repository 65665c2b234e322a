"""Convolutions of data in gradient graphs that are differentiated a second time (Hessian-vector products).

Differentiating a gradient through ``conv2d`` runs torch's convolution double backward, which computes the gradient
with respect to the convolution's *input* whenever the weight's is asked for, whether or not the input needs one
(``_convolution_double_backward`` in ATen tests only ``input.numel() != 0``). For the first convolution of a network
that input is the data set: a transposed convolution over every training image, whose result is thrown away. On
LeNet with 5,500 MNIST images it was 31% of a Hessian-vector product.

:func:`data_convolutions` replaces, while it is active, every ``conv2d`` whose input needs no gradient by
:class:`DataConvolution`: the same native forward and first backward, and a second backward with only the term
that a gradient with respect to the weights needs. Results are the same products in the same order (bitwise equal
on LeNet and the small CNN here).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class DataConvolution(torch.autograd.Function):
    """``conv2d(x, weight, bias)`` for an ``x`` without gradient, twice differentiable in ``weight`` and ``bias``."""

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int
    ) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.arguments = (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_weight, grad_bias = WeightGradient.apply(grad_output, x, weight.detach(), ctx.has_bias, *ctx.arguments)
        return None, grad_weight, grad_bias, None, None, None, None


class WeightGradient(torch.autograd.Function):
    """The gradient of ``conv2d(x, weight, bias)`` with respect to ``weight`` and ``bias`` as a function of the
    output's gradient: forward is torch's own kernel, backward is the one convolution it needs, ``conv2d(x, gg_weight,
    gg_bias)``."""

    @staticmethod
    def forward(
        grad_output: Tensor,
        x: Tensor,
        weight: Tensor,
        has_bias: bool,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> tuple[Tensor, Tensor | None]:
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            x,
            weight,
            [weight.shape[0]] if has_bias else None,
            _pair(stride),
            _pair(padding),
            _pair(dilation),
            False,
            [0, 0],
            groups,
            [False, True, has_bias],
        )
        return grad_weight, grad_bias

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, x, _, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x)
        ctx.arguments = (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, gg_weight: Tensor, gg_bias: Tensor | None) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors  # autograd passes zeros, not None, for an output that had no gradient
        return F.conv2d(x, gg_weight, gg_bias, *ctx.arguments), None, None, None, None, None, None, None


def _pair(value: Any) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


class _DataConvolutions(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            bound = _bind(*args, **kwargs)
            if bound is not None:
                return DataConvolution.apply(*bound)
        return func(*args, **kwargs)


def _bind(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> tuple[Any, ...] | None:
    """The arguments for :class:`DataConvolution`, or ``None`` where the native convolution is the right one."""
    if x.requires_grad or not weight.requires_grad or isinstance(padding, str) or x.dim() != 4:
        return None
    return x, weight, bias, stride, padding, dilation, groups


def data_convolutions() -> TorchFunctionMode:
    """A context in which every ``conv2d`` of an input without gradient is a :class:`DataConvolution`."""
    return _DataConvolutions()
