"""Kozachenko-Leonenko (KoLeo) entropy regularisers: on the prototypes and on the batch.

KoLeo-proto (paper 1, eq. 5) on the L2-normalised prototypes mu_k = w_k / ||w_k||, W [K, D]:

    h(W) = -(1/K) sum_k log(d_k + eps),    d_k = min_{i != k} ||mu_k - mu_i||

Minimising h spreads the prototypes apart (it maximises their differential entropy estimate).
For large K the nearest neighbour is searched within random groups only (paper 1, appendix A.3):
the prototypes are permuted with `generator`, cut into T = ceil(K / group_size) consecutive
groups of near-equal size (the first K mod T groups hold one more member), and

    h(W) = sum_t h(W_t)    (a sum over groups, not a mean, as in the paper).

Each group's [S, S] similarity tile is only used to pick the neighbour (no grad). Groups of one
size are batched ([G, S, S] tiles of at most TILE_ELEMENTS floats), so K = 2^20 in groups of
2048 takes 128 batched steps rather than 512 Python iterations.

KoLeo-proto has its own backward, so that nothing [K, D]-sized waits in the autograd graph: the
forward keeps only the permutation and each prototype's neighbour ([K] integers), and the
backward regathers each batch of groups from W and writes its rows of dL/dW [K, D] directly.
With e_k = (mu_k - mu_j) / d_k for the neighbour j = j(k) and a_k = -(1/S) / (d_k + eps):

    dL/dmu_k = a_k e_k - sum_{i: j(i) = k} a_i e_i           (neighbours lie in the same group)
    dL/dw_k  = (g_k - <g_k, mu_k> mu_k) / ||w_k||,   g_k = dL/dmu_k

Autograd through the plain formula held about four [K, D] copies (the normalised prototypes,
the gathered groups, their neighbours and differences) from the forward to the backward, and
one more [K, D] gradient per batch of groups in the backward.

KoLeo-data (DINOv2) is the same estimator on the batch embeddings [B, D], over the whole batch.

eps = 1e-8 inside the log (as DINOv2) keeps the loss finite for exact duplicates (d_k = 0);
the norm's gradient at a zero difference is taken as 0, so duplicates give a finite gradient.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from fastproto.device_copy import to_device_async
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


def _neighbours(x: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest other row in its group, x [..., S, D] unit rows -> [..., S]."""
    with torch.no_grad():
        sim = x @ x.transpose(-1, -2)  # [..., S, S]
        sim.diagonal(dim1=-2, dim2=-1).fill_(-3.0)  # below any cosine: a row never picks itself
        return sim.argmax(dim=-1)


def _log_distance(x: torch.Tensor, neighbour: torch.Tensor, eps: float) -> torch.Tensor:
    """log(||x_k - x_neighbour[k]|| + eps) for x [..., S, D], neighbour [..., S] -> [..., S]."""
    nearest = torch.take_along_dim(x, neighbour[..., None], dim=-2)  # [..., S, D]
    return torch.log((x - nearest).norm(dim=-1) + eps)


def _nearest_log_distance(x: torch.Tensor, eps: float) -> torch.Tensor:
    """log(d_k + eps) for each row of x [..., S, D] (unit rows), d_k = distance to the nearest
    other row of the same group -> [..., S]; differentiable."""
    return _log_distance(x, _neighbours(x), eps)


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / ||x||, ||x||) over the last dim, with F.normalize's floor on the norm."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [..., 1]
    return x / norm, norm


def _group_gradient(x: torch.Tensor, neighbour: torch.Tensor, eps: float) -> torch.Tensor:
    """dL/dx [n, S, D] of L = -sum over the n groups of mean_k log(d_k + eps), x [n, S, D] raw
    prototype rows, neighbour [n, S] (see the module docstring)."""
    mu, norm = _unit(x)
    diff = mu - torch.take_along_dim(mu, neighbour[..., None], dim=-2)  # [n, S, D]
    distance = diff.norm(dim=-1, keepdim=True)  # [n, S, 1]
    # a_k / d_k; a zero distance (duplicates) gets a zero gradient, as torch's norm gives
    coef = torch.where(distance > 0, -1.0 / (x.shape[1] * distance * (distance + eps)), 0.0)
    push = diff.mul_(coef)  # [n, S, D], a_k e_k: pushes row k away from its neighbour
    # ... and the neighbour j(k) gets -a_k e_k
    grad_mu = push.scatter_add(1, neighbour[..., None].expand_as(push), push.neg())
    radial = (grad_mu * mu).sum(dim=-1, keepdim=True)  # [n, S, 1]
    return grad_mu.sub_(radial * mu).div_(norm)


def _group_batches(order: torch.Tensor, num: int, group_size: int) -> Iterator[torch.Tensor]:
    """Index tensors [n, S] of the permuted prototypes, each batch of groups of one size S with
    n * S * S <= TILE_ELEMENTS (the groups come in at most two runs of one size each)."""
    start = 0
    for size, run in itertools.groupby(koleo_group_sizes(num, group_size)):
        count = len(list(run))
        per_step = max(1, TILE_ELEMENTS // (size * size))
        for first in range(0, count, per_step):
            n = min(per_step, count - first)
            yield order[start + first * size : start + (first + n) * size].view(n, size)
        start += count * size


class _KoLeoProto(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, weights: torch.Tensor, order: torch.Tensor, group_size: int, eps: float
    ) -> torch.Tensor:
        total = weights.new_zeros(())
        neighbours = []
        for index in _group_batches(order, weights.shape[0], group_size):
            mu = _unit(weights[index])[0]  # [n, S, D]
            neighbour = _neighbours(mu)  # [n, S]
            total -= _log_distance(mu, neighbour, eps).mean(dim=1).sum()
            neighbours.append(neighbour)
        ctx.save_for_backward(weights, order, torch.cat([n.flatten() for n in neighbours]))
        ctx.group_size, ctx.eps = group_size, eps
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor):
        weights, order, neighbours = ctx.saved_tensors
        grad = torch.empty_like(weights)  # [K, D]: every row lies in exactly one group
        done = 0
        for index in _group_batches(order, weights.shape[0], ctx.group_size):
            neighbour = neighbours[done : done + index.numel()].view_as(index)
            rows = _group_gradient(weights[index], neighbour, ctx.eps)  # [n, S, D]
            grad.index_copy_(0, index.flatten(), rows.flatten(0, 1).mul_(grad_total))
            done += index.numel()
        return grad, None, None, None


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
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(weights.shape[0], generator=generator, device=device)  # [K]
    # a host permutation is queued to the device, not waited for
    return _KoLeoProto.apply(weights, to_device_async(order, weights.device), group_size, eps)


def koleo_data(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo-data loss (scalar) of the batch embeddings [B, D] (DINOv2): -mean log(d + eps)."""
    _check_rows(embeddings, "embeddings")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x = F.normalize(embeddings, dim=1)  # [B, D]
    return -_nearest_log_distance(x, eps).mean()
