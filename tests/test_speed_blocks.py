"""``benchmark.peers.speed_blocks``: the operation count its GFLOP/s column divides by, and which rows it counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import Problem
from benchmark.numerics.losses import cross_entropy


@pytest.fixture(scope="module")
def blocks():
    from benchmark.peers import speed_blocks

    return speed_blocks


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


def small_cnn_problem(n: int = 24) -> Problem:
    """A convolutional problem small enough to measure every variant in a second."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x, y = torch.randn(2 * n, 1, 8, 8), torch.randint(0, 4, (2 * n,))
    return Problem.from_module(module, cross_entropy, x[:n], y[:n], x[n:], y[n:], weight_decay=0.01)


UNDER_VMAP = {
    "kept graph in pieces, batched (is_grads_batched)",
    "forward-over-reverse, vmap over vectors",
    "Problem.train_gradient_products",
    "jvp per vector, whole set at once",
    "per-example gradients (vmap(grad), chunks of 500) @ vectors",
}
"""The variants inside which ``vmap`` batches the convolutions (the training-side passes' row is matched apart)."""


def test_no_operations_are_counted_under_vmap(blocks, monkeypatch):
    """``vmap`` makes convolutions grouped, whose weight gradient torch's counter has counted ``groups`` times too
    high: so the script never runs the counter on a variant with ``vmap`` inside, and its row shows no GFLOP figure,
    whatever the counter would say. Every other row is counted and shows both figures."""
    counted = []
    count = blocks.counted_flops

    def spy(fn):
        counted.append(count(fn))
        return counted[-1]

    monkeypatch.setattr(blocks, "counted_flops", spy)
    problem = small_cnn_problem()
    vectors = torch.randn(3, problem.n_params, generator=torch.Generator().manual_seed(1))
    rows = blocks.block_rows(problem, vectors, repeats=1)
    variants = [row[1] for row in rows]
    under_vmap = {v for v in variants if v in UNDER_VMAP or v.startswith("jvp per vector, passes of")}
    assert len(under_vmap) == len(UNDER_VMAP) + 1 and len(variants) == 13
    for row in rows:
        gflop, rate = row[5], row[6]
        if row[1] in under_vmap:
            assert (gflop, rate) == ("", ""), row
        else:
            assert float(gflop) >= 0 and float(rate) >= 0, row  # figures (tiny ones: rounded to 0.0)
    assert len(counted) == len(rows) - len(under_vmap) and min(counted) > 0
    # every variant agrees with the reference product it is checked against
    assert all(float(row[7]) < 1e-3 for row in rows)
