"""Unique prototypes and partial prototype collapse (paper 1, definition 4.1).

The K prototypes W [K, D] are compared by direction only: mu_k = w_k / ||w_k||. A partition of
them into M sets V_m with representatives v_m in V_m is an eps-collapse when every member is close
to its representative in cosine distance,

    1 - v_m^T mu_j < eps     for all mu_j in V_m,

and the redundancy factor of a unique prototype is r_m = |V_m|. The partition is built greedily:
visit the prototypes in index order; an unassigned prototype becomes a representative and takes
every still-unassigned prototype within eps of it. Equivalently, prototype j belongs to the
lowest-index representative within eps of it, and j is a representative when no earlier
representative is within eps. That second form is what lets the search run in blocks of rows: a
block is first matched against the representatives of earlier blocks ([B, C] similarity tiles),
and only the members left over are resolved by the sequential rule inside the block ([B, B]).
No [K, K] matrix is ever held; the worst case (all K unique) costs K^2 D / 2 multiply-adds.

The "void prototype set" of the DINO-vMF paper is a single huge duplicate set, reported here as
`largest_duplicate_set`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class UniqueReport:
    """The greedy eps-partition of K prototypes into M unique ones.

    num_unique: M.
    redundancy: LongTensor [M], r_m = |V_m|, in representative (index) order.
    representative_index: LongTensor [M], the prototype index of each representative v_m.
    representative: LongTensor [K], for every prototype the index of its representative.
    largest_duplicate_set: max_m r_m (a huge value is the DINO-vMF paper's void set).
    eps: the cosine-distance threshold used.
    """

    num_unique: int
    redundancy: torch.Tensor
    representative_index: torch.Tensor
    representative: torch.Tensor
    largest_duplicate_set: int
    eps: float


def _check_weights(weights: torch.Tensor) -> None:
    if not isinstance(weights, torch.Tensor) or weights.dim() != 2 or weights.shape[0] < 1:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights)
        raise ValueError(f"weights must be a 2-D tensor [K, D] with K >= 1, got {shape}")
    if not weights.is_floating_point():
        raise ValueError(f"weights must be floating point, got {weights.dtype}")
    if torch.isnan(weights).any():
        raise ValueError("weights contain NaN; check the checkpoint or the training run")
    if torch.isinf(weights).any():
        raise ValueError("weights contain inf; check the checkpoint or the training run")
    if (weights.norm(dim=1) == 0).any():
        raise ValueError("a prototype has zero norm and so no direction; drop it before analysis")


def _check_eps(eps: float) -> None:
    if not (0.0 < eps < 2.0):
        raise ValueError(f"eps is a cosine distance and must lie in (0, 2), got {eps}")


def _directions(weights: torch.Tensor) -> torch.Tensor:
    """L2-normalised prototypes [K, D], float64 if given float64, else float32."""
    dtype = torch.float64 if weights.dtype == torch.float64 else torch.float32
    return F.normalize(weights.detach().to(dtype), dim=1)


def _match_earlier(block: torch.Tensor, reps: torch.Tensor, eps: float, chunk: int) -> torch.Tensor:
    """For each row of block [B, D], the position in reps [R, D] of the first rep within eps.

    Returns LongTensor [B] with -1 where no rep is close. Tiles are [B, chunk]; a row maximum
    screens each tile first, since most rows of most tiles have no close representative.
    """
    threshold = 1.0 - eps  # 1 - v^T mu < eps  <=>  v^T mu > 1 - eps
    found = torch.full((block.shape[0],), -1, dtype=torch.long, device=block.device)
    for start in range(0, reps.shape[0], chunk):
        open_rows = (found < 0).nonzero().squeeze(1)
        if open_rows.numel() == 0:
            break
        tile = block[open_rows] @ reps[start : start + chunk].T  # [B', C]
        hit = (tile.amax(dim=1) > threshold).nonzero().squeeze(1)
        if hit.numel() == 0:
            continue
        # argmax returns the first maximum, i.e. the lowest-index close representative.
        first = (tile[hit] > threshold).to(torch.uint8).argmax(dim=1) + start
        found[open_rows[hit]] = first
    return found


def _resolve_within(block: torch.Tensor, eps: float) -> torch.Tensor:
    """Sequential greedy rule inside one block [B, D]: position of each row's representative.

    Only rows with a close later row can claim anything, so only they are visited in order;
    every row still unclaimed afterwards is its own representative.
    """
    later = torch.triu(block @ block.T > 1.0 - eps, diagonal=1)  # [B, B], close and j > i
    owner = torch.full((block.shape[0],), -1, dtype=torch.long, device=block.device)
    for i in later.any(dim=1).nonzero().squeeze(1).tolist():
        if owner[i] >= 0:
            continue
        owner[i] = i
        owner[later[i] & (owner < 0)] = i
    unclaimed = owner < 0
    owner[unclaimed] = unclaimed.nonzero().squeeze(1)
    return owner


def unique_prototypes(
    weights: torch.Tensor, eps: float = 0.025, block_size: int = 4096
) -> UniqueReport:
    """Greedy eps-partition of the prototypes weights [K, D] (paper 1, definition 4.1).

    Works in row blocks of `block_size`; memory beyond the normalised copy of W is a few
    [block_size, block_size] tiles. The test is v^T mu > 1 - eps, with similarities in float32
    (float64 if the weights are float64), so pairs within rounding of the threshold may fall
    either way.
    """
    _check_weights(weights)
    _check_eps(eps)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    mu = _directions(weights)  # [K, D]
    k_total = mu.shape[0]
    representative = torch.empty(k_total, dtype=torch.long, device=mu.device)
    rep_ids: list[torch.Tensor] = []
    reps = mu.new_empty((0, mu.shape[1]))  # [R, D], grows block by block
    for start in range(0, k_total, block_size):
        block = mu[start : start + block_size]  # [B, D]
        ids = torch.arange(start, start + block.shape[0], device=mu.device)
        earlier = _match_earlier(block, reps, eps, block_size)  # [B], positions in reps
        matched = earlier >= 0
        if matched.any():
            representative[ids[matched]] = torch.cat(rep_ids)[earlier[matched]]
        left = (~matched).nonzero().squeeze(1)
        if left.numel():
            owner = _resolve_within(block[left], eps)  # positions within `left`
            representative[ids[left]] = ids[left[owner]]
            new = left[owner == torch.arange(left.numel(), device=mu.device)]
            rep_ids.append(ids[new])
            reps = torch.cat([reps, block[new]])
    rep_index = torch.cat(rep_ids)
    position = torch.full((k_total,), -1, dtype=torch.long, device=mu.device)
    position[rep_index] = torch.arange(rep_index.numel(), device=mu.device)
    redundancy = torch.bincount(position[representative], minlength=rep_index.numel())
    return UniqueReport(
        num_unique=int(rep_index.numel()),
        redundancy=redundancy,
        representative_index=rep_index,
        representative=representative,
        largest_duplicate_set=int(redundancy.max()),
        eps=float(eps),
    )


def unique_prototypes_curve(
    weights: torch.Tensor, eps_values: Sequence[float], block_size: int = 4096
) -> list[int]:
    """Number of unique prototypes M for each eps in `eps_values` (for M-against-eps plots)."""
    return [unique_prototypes(weights, eps, block_size).num_unique for eps in eps_values]


def _check_share_inputs(
    embeddings: torch.Tensor, weights: torch.Tensor, report: UniqueReport, bias: torch.Tensor | None
) -> None:
    _check_weights(weights)
    if embeddings.dim() != 2 or embeddings.shape[1] != weights.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] with D = {weights.shape[1]} to match the prototypes, "
            f"got {tuple(embeddings.shape)}"
        )
    if embeddings.shape[0] < 1 or not torch.isfinite(embeddings).all():
        raise ValueError("embeddings must hold at least one row and only finite values")
    if report.representative.numel() != weights.shape[0]:
        raise ValueError(
            f"report was computed for K = {report.representative.numel()} prototypes but weights "
            f"has K = {weights.shape[0]}; recompute it with unique_prototypes(weights)"
        )
    if bias is not None and tuple(bias.shape) != (weights.shape[0],):
        raise ValueError(f"bias must be [K] = [{weights.shape[0]}], got {tuple(bias.shape)}")


def data_share_by_redundancy(
    embeddings: torch.Tensor,
    weights: torch.Tensor,
    report: UniqueReport,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 8192,
) -> dict[int, float]:
    """Average data share of the unique prototypes, grouped by redundancy factor (paper 1 fig. 1).

    Every sample y_n (rows of embeddings [N, D], e.g. the L2-normalised head output) is assigned
    to the best of the M representative prototypes only,

        m*(n) = argmax_m  <w_m, y_n> / temperature + bias[m],

    with `bias` an optional per-prototype term [K] (for example the vMF log-normaliser
    log C_p(||w_k|| / tau), with temperature = tau). The share of prototype m is
    s_m = #{n : m*(n) = m} / N, so the shares of all M sum to 1. The value returned for a
    redundancy factor r is the mean of s_m over the unique prototypes with r_m = r; keys are
    the redundancy factors present, in increasing order.
    """
    _check_share_inputs(embeddings, weights, report, bias)
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    rep = report.representative_index.to(weights.device)
    w_rep = weights.detach()[rep].float()  # [M, D]
    b_rep = bias.detach()[rep].float() if bias is not None else w_rep.new_zeros(rep.numel())
    counts = torch.zeros(rep.numel(), dtype=torch.long, device=weights.device)
    for start in range(0, embeddings.shape[0], chunk_size):
        y = embeddings[start : start + chunk_size].detach().to(w_rep)  # [n, D]
        best = (y @ w_rep.T / temperature + b_rep).argmax(dim=1)  # [n]
        counts += torch.bincount(best, minlength=rep.numel())
    share = counts.double().cpu() / embeddings.shape[0]  # [M]
    redundancy = report.redundancy.cpu()
    return {int(r): float(share[redundancy == r].mean()) for r in torch.unique(redundancy)}
