"""Kozachenko-Leonenko (KoLeo) entropy regularisers: on the prototypes and on the batch.

KoLeo-proto (paper 1, eq. 5) on the L2-normalised prototypes mu_k = w_k / ||w_k||, W [K, D]:

    h(W) = -(1/K) sum_k log(d_k + eps),    d_k = min_{i != k} ||mu_k - mu_i||

Minimising h spreads the prototypes apart (it maximises their differential entropy estimate).
For large K the nearest neighbour is searched within random groups only (paper 1, appendix A.3):
the prototypes are permuted with `generator`, cut into T = ceil(K / group_size) consecutive
groups of near-equal size (the first K mod T groups hold one more member), and

    h(W) = sum_t h(W_t)    (a sum over groups, not a mean, as in the paper).

Each group's [S, S] similarity tile is only used to pick the neighbour (no grad); the distance
is then recomputed from the two rows, so autograd stores [S, D], never [S, S]. Groups of one
size are batched ([G, S, S] tiles of at most TILE_ELEMENTS floats), so K = 2^20 in groups of
2048 takes 128 batched steps rather than 512 Python iterations.

KoLeo-data (DINOv2) is the same estimator on the batch embeddings [B, D], over the whole batch.

eps = 1e-8 inside the log (as DINOv2) keeps the loss finite for exact duplicates (d_k = 0);
the norm's gradient at a zero difference is taken as 0, so duplicates give a finite gradient.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from fastproto.value_checks import check_values

TILE_ELEMENTS = 1 << 24  # similarity floats per batched step: [G, S, S] (64 MiB in float32)


def _check_rows(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(f"{name} must be a 2-D tensor [rows, D], got {shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows: a single row has no nearest neighbour")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not check_values(x):  # the NaN/inf tests are device syncs: on a GPU in debug mode only
        return
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; check the training run")
    if torch.isinf(x).any():
        raise ValueError(f"{name} contains inf; check the training run")


def _nearest_log_distance(x: torch.Tensor, eps: float) -> torch.Tensor:
    """log(d_k + eps) for each row of x [..., S, D] (unit rows), d_k = distance to the nearest
    other row of the same group -> [..., S]."""
    with torch.no_grad():
        sim = x @ x.transpose(-1, -2)  # [..., S, S]
        sim.diagonal(dim1=-2, dim2=-1).fill_(-3.0)  # below any cosine: a row never picks itself
        neighbour = sim.argmax(dim=-1)  # [..., S]
    nearest = torch.take_along_dim(x, neighbour[..., None], dim=-2)  # [..., S, D]
    distance = (x - nearest).norm(dim=-1)  # [..., S], differentiable
    return torch.log(distance + eps)


def koleo_group_sizes(num: int, group_size: int) -> list[int]:
    """Sizes of the near-equal groups that KoLeo-proto cuts `num` permuted prototypes into.

    T = ceil(num / group_size) groups, the first num mod T of them one larger. When that would
    leave single-member groups (only possible for group_size = 2 and odd num), T drops to
    num // 2 so that one group holds 3.
    """
    groups = max(1, min(math.ceil(num / group_size), num // 2))
    base, extra = divmod(num, groups)
    return [base + 1] * extra + [base] * (groups - extra)


def koleo_proto(
    weights: torch.Tensor,
    group_size: int = 2048,
    generator: torch.Generator | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """KoLeo-proto loss (scalar) of the prototypes weights [K, D], summed over random groups."""
    _check_rows(weights, "weights")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (each prototype needs a neighbour), got {group_size}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    mu = F.normalize(weights, dim=1)  # [K, D]
    num = mu.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(num, generator=generator, device=device).to(mu.device)  # [K]
    total = mu.new_zeros(())
    start = 0
    # the groups come in at most two runs of one size each: batch each run
    for size, run in itertools.groupby(koleo_group_sizes(num, group_size)):
        count = len(list(run))
        per_step = max(1, TILE_ELEMENTS // (size * size))
        for first in range(0, count, per_step):
            n = min(per_step, count - first)
            index = order[start + first * size : start + (first + n) * size].view(n, size)
            group_mean = _nearest_log_distance(mu[index], eps).mean(dim=1)  # [n] per group
            total = total - group_mean.sum()
        start += count * size
    return total


def koleo_data(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo-data loss (scalar) of the batch embeddings [B, D] (DINOv2): -mean log(d + eps)."""
    _check_rows(embeddings, "embeddings")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x = F.normalize(embeddings, dim=1)  # [B, D]
    return -_nearest_log_distance(x, eps).mean()
