"""Farthest-first choice of rows: the embeddings a set of unit directions covers worst.

Used by the EM mixture's "refill" dead policy (fastproto.prototype_em): a dead component is
moved onto the batch row least similar to every live component, then the next onto the row least
similar to the live components and the rows already taken, and so on (greedy farthest-first
traversal, the seeding of k-means++ without the sampling). Rows that the live mixture already
explains are never picked while a worse one remains, and two picks are never the same direction
unless the batch has nothing else left.

Shapes: rows y [N, D] and directions [L, D], unit rows; the best cosine of each row to the
directions is reduced over L in blocks, so no tensor larger than [N, block] is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_BLOCK = 4096  # directions per [N, block] tile of cosines


def best_cosine(rows: Tensor, directions: Tensor, block: int = DEFAULT_BLOCK) -> Tensor:
    """max_l <rows_n, directions_l> [N]; -inf for every row when there are no directions."""
    if block < 1:
        raise ValueError(f"block must be >= 1 (directions per tile), got {block}")
    best = rows.new_full((rows.shape[0],), -torch.inf)  # [N]
    for start in range(0, directions.shape[0], block):
        tile = rows @ directions[start : start + block].T  # [N, block]
        best = torch.maximum(best, tile.max(dim=1).values)
    return best


def farthest_rows(
    rows: Tensor, directions: Tensor, count: int, block: int = DEFAULT_BLOCK
) -> Tensor:
    """Indices [min(count, N)] of `rows` [N, D] in the order farthest-first picks them.

    The first is the row whose best cosine to `directions` [L, D] is lowest; each later pick
    is the row whose best cosine to the directions and to the rows picked so far is lowest. Ties
    go to the lower index, so the choice is deterministic.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if rows.dim() != 2 or directions.dim() != 2 or rows.shape[1] != directions.shape[1]:
        raise ValueError(
            f"rows [N, D] and directions [L, D] must share D, got {tuple(rows.shape)} and "
            f"{tuple(directions.shape)}"
        )
    best = best_cosine(rows, directions, block)  # [N]
    picked: list[int] = []
    for _ in range(min(count, rows.shape[0])):
        worst = int(torch.argmin(best))  # a host sync per pick; count is a handful
        picked.append(worst)
        best = torch.maximum(best, rows @ rows[worst])  # the new seed now covers its neighbours
        best[worst] = torch.inf  # never the same row twice
    return torch.tensor(picked, dtype=torch.long, device=rows.device)
