"""Farthest-first row choice (fastproto/farthest_rows.py) against a plain float64 reference that
forms the whole similarity matrix and runs the greedy loop over Python lists."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastproto.farthest_rows import best_cosine, farthest_rows


def reference_farthest(rows: torch.Tensor, directions: torch.Tensor, count: int) -> list[int]:
    """Greedy farthest-first from the definition: each pick minimises the best cosine to the
    directions and the rows picked so far; ties to the lower index."""
    y, d = rows.double().tolist(), directions.double().tolist()
    covers = [list(v) for v in d]
    picked: list[int] = []
    for _ in range(min(count, len(y))):

        def score(i: int) -> float:
            dots = (sum(a * b for a, b in zip(y[i], c, strict=True)) for c in covers)
            return max(dots, default=-1e300)

        free = [i for i in range(len(y)) if i not in picked]
        best = min(free, key=lambda i: (score(i), i))
        picked.append(best)
        covers.append(y[best])
    return picked


@pytest.mark.parametrize("block", [1, 3, 4096])
def test_blocked_best_cosine_equals_the_whole_matrix(block: int) -> None:
    torch.manual_seed(0)
    rows = F.normalize(torch.randn(13, 6, dtype=torch.float64), dim=1)
    directions = F.normalize(torch.randn(7, 6, dtype=torch.float64), dim=1)
    want = (rows @ directions.T).max(dim=1).values
    torch.testing.assert_close(best_cosine(rows, directions, block), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("count", [0, 1, 4, 13, 20])
def test_picks_match_the_reference(count: int) -> None:
    torch.manual_seed(1)
    rows = F.normalize(torch.randn(13, 5, dtype=torch.float64), dim=1)
    directions = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    got = farthest_rows(rows, directions, count, block=2).tolist()
    assert got == reference_farthest(rows, directions, count)
    assert len(set(got)) == len(got) == min(count, 13)


def test_the_uncovered_cluster_is_picked_first_and_then_not_again() -> None:
    """Two clusters the directions cover and one they do not: the first pick lies in the
    uncovered one, the second not beside it."""
    torch.manual_seed(2)
    e = torch.eye(4, dtype=torch.float64)
    covered = e[[0, 0, 1, 1]] + 0.05 * torch.randn(4, 4, dtype=torch.float64)
    uncovered = e[[2, 2, 2]] + 0.05 * torch.randn(3, 4, dtype=torch.float64)
    opposite = -(e[:1] + e[1:2])  # cosine -0.71 to both directions: the worst covered row
    rows = F.normalize(torch.cat([covered, uncovered, opposite]), dim=1)  # [8, 4]
    picks = farthest_rows(rows, e[:2], 2).tolist()
    assert picks[0] == 7
    assert picks[1] in (4, 5, 6)  # then the e2 cluster (cosine ~0 to e0, e1 and row 7)
    # with no directions at all the first pick is row 0 (every score ties at -inf)
    assert farthest_rows(rows, e[:0], 1).tolist() == [0]


def test_bad_input_is_refused() -> None:
    rows = F.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(ValueError, match="share D"):
        farthest_rows(rows, torch.randn(2, 5), 1)
    with pytest.raises(ValueError, match="count must be >= 0"):
        farthest_rows(rows, rows, -1)
    with pytest.raises(ValueError, match="block must be >= 1"):
        best_cosine(rows, rows, 0)
