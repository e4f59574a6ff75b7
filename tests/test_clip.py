"""Per-parameter gradient clipping (DINO's clip_gradients): each gradient on its own."""

from __future__ import annotations

import math

import torch
from torch import nn

from fastproto.train.step import clip_per_parameter


def _params(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for g in grads:
        p = nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        params.append(p)
    return params


def test_each_gradient_is_clipped_to_the_bound_by_itself() -> None:
    big, small = _params([6.0, 0.0, 0.0], [0.6, 0.8])
    frozen = nn.Parameter(torch.zeros(2))  # no gradient: skipped
    norm = clip_per_parameter([big, small, frozen], max_norm=3.0)
    assert math.isclose(float(norm), math.sqrt(36 + 1), rel_tol=1e-6)  # the norm before clipping
    assert torch.allclose(big.grad, torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)  # 6 -> 3
    assert torch.equal(small.grad, torch.tensor([0.6, 0.8]))  # norm 1 <= 3: unchanged
    assert frozen.grad is None


def test_a_zero_bound_leaves_gradients_alone_and_no_gradient_is_norm_zero() -> None:
    (p,) = _params([30.0, 40.0])
    assert math.isclose(float(clip_per_parameter([p], max_norm=0.0)), 50.0, rel_tol=1e-6)
    assert torch.equal(p.grad, torch.tensor([30.0, 40.0]))
    assert float(clip_per_parameter([nn.Parameter(torch.zeros(3))], max_norm=3.0)) == 0.0
