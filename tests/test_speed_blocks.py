"""The operation count of ``scripts/speed_blocks.py``: what its GFLOP/s column divides by."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def blocks():
    spec = importlib.util.spec_from_file_location("speed_blocks", REPO_ROOT / "scripts" / "speed_blocks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counted_flops_are_the_textbook_counts_forward_and_backward(blocks):
    a, b = torch.randn(6, 5), torch.randn(5, 4)
    assert blocks.counted_flops(lambda: a @ b) == 2 * 6 * 5 * 4
    x, w = torch.randn(3, 2, 9, 9), torch.randn(4, 2, 3, 3, requires_grad=True)
    conv = 2 * 3 * 4 * 7 * 7 * 2 * 3 * 3  # 2 N K H' W' C r^2
    assert blocks.counted_flops(lambda: F.conv2d(x, w)) == conv
    # a backward through a graph built outside the counter (as the kept graph is) is counted: here only the
    # weight gradient, one convolution's worth, since the images need none
    loss = F.conv2d(x, w).sum()
    assert blocks.counted_flops(lambda: torch.autograd.grad(loss, w, retain_graph=True)[0]) == conv


def test_why_nothing_under_vmap_is_counted(blocks):
    """``vmap`` over examples makes a convolution grouped, and torch's counter counts a grouped convolution's weight
    gradient ``groups`` times too high; the script leaves such rows uncounted (this fails once torch counts them
    right)."""
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    out = F.conv2d(torch.randn(1, 8, 9, 9), w, groups=8)
    forward = blocks.counted_flops(lambda: F.conv2d(torch.randn(1, 8, 9, 9), w.detach(), groups=8))
    assert forward == 2 * 8 * 7 * 7 * 3 * 3
    assert blocks.counted_flops(lambda: torch.autograd.grad(out.sum(), w, retain_graph=True)[0]) == 8 * forward
