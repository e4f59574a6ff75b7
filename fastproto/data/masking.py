"""iBOT's block-wise masks over the patch grid of a global crop.

Our reading of iBOT (block shape, following BEiT), per image:
  target ratio  rho ~ U(max(0, ratio - ratio_var), min(1, ratio + ratio_var))
                (iBOT's prediction ratio 0.3 with prediction-ratio variance 0.2: U(0.1, 0.5));
  target count  T = rho * h * w patches;
  then repeat: up to 10 attempts to draw a block of area a ~ U(min_block, T - masked) and
  aspect r with log r ~ U(log min_aspect, -log min_aspect) (h_b = round(sqrt(a r)),
  w_b = round(sqrt(a / r)), h_b < h, w_b < w, corner uniform); a block is taken only if it
  adds at least one and at most T - masked new patches. Stop when masked >= T or no block
  fits in 10 attempts. So the masked fraction never exceeds rho and falls short of it only
  by less than one small block.
Output: bool [B, h, w], True = masked (the student sees the mask token there).
"""

from __future__ import annotations

import math
import random

import torch

_ATTEMPTS = 10


def _add_block(
    mask: list[list[bool]], remaining: float, min_block: int, log_aspect: float, rng: random.Random
) -> int:
    """Try up to 10 blocks; mask the first that adds 1..remaining patches. Returns new count."""
    gh, gw = len(mask), len(mask[0])
    for _ in range(_ATTEMPTS):
        area = rng.uniform(min_block, max(min_block, remaining))
        aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (0 < bh < gh and 0 < bw < gw):
            continue
        top = rng.randint(0, gh - bh)
        left = rng.randint(0, gw - bw)
        new = sum(not mask[i][j] for i in range(top, top + bh) for j in range(left, left + bw))
        if 0 < new <= remaining:
            for i in range(top, top + bh):
                for j in range(left, left + bw):
                    mask[i][j] = True
            return new
    return 0


def _one_mask(
    grid: tuple[int, int], target: float, min_block: int, log_aspect: float, rng: random.Random
) -> list[list[bool]]:
    mask = [[False] * grid[1] for _ in range(grid[0])]
    count = 0
    while count < target:
        added = _add_block(mask, target - count, min_block, log_aspect, rng)
        if added == 0:
            break
        count += added
    return mask


def block_masks(
    batch_size: int,
    grid: tuple[int, int] = (14, 14),
    ratio: float = 0.3,
    ratio_var: float = 0.2,
    min_block: int = 4,
    min_aspect: float = 0.3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """bool [B, h, w] iBOT block masks (see the module docstring for the sampling)."""
    if batch_size < 0 or min(grid) < 2:
        raise ValueError(f"batch_size={batch_size} must be >= 0 and grid={grid} at least 2x2")
    if not (0.0 <= ratio <= 1.0 and ratio_var >= 0.0):
        raise ValueError(f"ratio={ratio} must lie in [0, 1] and ratio_var={ratio_var} be >= 0")
    if min_block < 1 or not 0.0 < min_aspect <= 1.0:
        raise ValueError(f"min_block={min_block} must be >= 1, min_aspect={min_aspect} in (0, 1]")
    # One Python RNG seeded from the torch generator keeps the per-patch loop cheap.
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    lo, hi = max(0.0, ratio - ratio_var), min(1.0, ratio + ratio_var)
    cells = grid[0] * grid[1]
    masks = [
        _one_mask(grid, rng.uniform(lo, hi) * cells, min_block, -math.log(min_aspect), rng)
        for _ in range(batch_size)
    ]
    return torch.tensor(masks, dtype=torch.bool).reshape(batch_size, *grid)
