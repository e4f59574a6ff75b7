"""iBOT block masks: shapes, masked ratios against the per-image target range, block structure."""

from __future__ import annotations

import pytest
import torch

from fastproto.data.masking import block_masks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_ratio_range() -> None:
    masks = block_masks(400, grid=(14, 14), ratio=0.3, ratio_var=0.2, generator=_gen(0))
    assert masks.shape == (400, 14, 14) and masks.dtype == torch.bool
    ratio = masks.float().mean(dim=(1, 2))  # [B]
    # Never above the largest target (0.5); near the drawn target, so spread over (0.1, 0.5).
    assert ratio.max() <= 0.5
    assert abs(ratio.mean().item() - 0.3) < 0.03
    assert (ratio < 0.2).float().mean() > 0.1 and (ratio > 0.4).float().mean() > 0.1
    assert (ratio < 0.05).float().mean() < 0.02


def test_fixed_target_is_reached_but_not_exceeded() -> None:
    masks = block_masks(200, grid=(14, 14), ratio=0.3, ratio_var=0.0, generator=_gen(1))
    counts = masks.sum(dim=(1, 2))
    assert counts.max() <= int(0.3 * 196 + 1e-9)
    assert counts.float().mean() > 0.9 * 0.3 * 196


def test_masks_are_made_of_blocks() -> None:
    masks = block_masks(100, grid=(16, 12), ratio=0.4, ratio_var=0.1, generator=_gen(2))
    padded = torch.nn.functional.pad(masks.int(), (1, 1, 1, 1))
    neighbours = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    )
    # Every block covers at least 4 cells (at least 2 along a side), so no masked cell is alone.
    assert ((neighbours > 0) | ~masks).all()


def test_deterministic_per_generator_and_zero_ratio() -> None:
    a = block_masks(8, generator=_gen(3))
    assert torch.equal(a, block_masks(8, generator=_gen(3)))
    assert not torch.equal(a, block_masks(8, generator=_gen(4)))
    assert not block_masks(4, ratio=0.0, ratio_var=0.0, generator=_gen(0)).any()


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ratio"):
        block_masks(2, ratio=1.5)
    with pytest.raises(ValueError, match="grid"):
        block_masks(2, grid=(1, 14))
    with pytest.raises(ValueError, match="min_block"):
        block_masks(2, min_block=0)
