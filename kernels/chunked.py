"""Prototype cross-entropy streamed over K in blocks: PyTorch twin of the Triton kernels.

Same math as kernels/reference.py, never an [Ns, K] or [Nt, K] tensor: only [N, block] tiles.
With a[n, k] = <w_s[k], y_s[n]> / tau_s + bias_s[k], q[m] = softmax_k(b[m]) and the pair table
(t[n, p], weight[n, p]):

    W[n] = sum_p weight[n, p]                                  [Ns]
    loss = sum_n W[n] lse_k(a[n]) - sum_{n,p} weight[n, p] <q[t[n, p]], a[n]>
    dL/da[n, k] = W[n] softmax_k(a[n])[k] - sum_p weight[n, p] q[t[n, p], k]

The teacher side enters only through q, so the pairing folds into teacher-row quantities that
one pass over K accumulates, and no [Ns, block] target tile is ever formed:

    V = q @ w_s [Nt, D],  u = q @ bias_s [Nt]      so <q[m], a[n]> = <y_s[n], V[m]>/tau_s + u[m]
    Z[m] = sum_{(n,p): t=m} weight y_s[n] [Nt, D],  c[m] = sum_{(n,p): t=m} weight [Nt]
    dL/dy_s = (W softmax(a)) @ w_s / tau_s - sum_p weight V[t] / tau_s
    dL/dw_s = ((W softmax(a))^T @ y_s - q^T @ Z) / tau_s,    dL/dbias_s = W^T softmax(a) - q^T c

Forward: pass 1 gets the teacher row log-sum-exp; pass 2 the student log-sum-exp (online, as in
flash attention), the teacher column sums, V, u and the teacher part of the prototype gradient
(q^T Z, q^T c: parameter-sized, and it becomes the gradient buffer). Backward recomputes only the
student tiles (as Cut Cross-Entropy and fused linear cross-entropy do). The vMF bias is
computed outside the autograd.Function, so its own autograd carries the bias gradient on to
||w_s[k]||.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from fastproto.kernels.common import compute_dtype, pair_table, student_bias, teacher_bias

# Elements per [N, block] logit tile (8 MiB in float32): large tiles keep the matmuls efficient,
# a fixed budget keeps memory flat in N (CPU timings: bench/results/prototype_loss_cpu.md).
TILE_ELEMENTS = 1 << 21
# On a GPU a tile of 2^21 elements is a few microseconds of work per operation, less than a
# kernel launch: at iBOT's 7526 patch rows and K = 262144 it would be ~940 tiles and ~10^4
# launches per step. 2^25 (128 MiB in float32; a few tiles live at once, against 80-141 GB on
# an A100-H200) makes that ~60 tiles. Not timed on a GPU yet.
CUDA_TILE_ELEMENTS = 1 << 25
MIN_BLOCK = 256


def default_block(n_rows: int, device: torch.device | None = None) -> int:
    """Prototypes per block for `n_rows` student or teacher rows on `device` (CPU if None)."""
    budget = CUDA_TILE_ELEMENTS if device is not None and device.type == "cuda" else TILE_ELEMENTS
    return max(MIN_BLOCK, budget // max(n_rows, 1))


def _blocks(k: int, block: int) -> Iterator[slice]:
    for start in range(0, k, block):
        yield slice(start, min(start + block, k))


def _tile(rows: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor, inv_temp: float):
    """Tempered logits of `rows` [N, D] against one block of prototypes -> [N, block]."""
    return torch.addmm(bias, rows, protos.to(rows.dtype).T, alpha=inv_temp)


def _row_lse(
    rows: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor, inv_temp: float, block: int
) -> torch.Tensor:
    """log-sum-exp over all K of each row's logits [N], streaming with a running max."""
    run_max = rows.new_full((rows.shape[0],), float("-inf"))
    run_sum = rows.new_zeros(rows.shape[0])
    for blk in _blocks(protos.shape[0], block):
        logits = _tile(rows, protos[blk], bias[blk], inv_temp)  # [N, block]
        new_max = torch.maximum(run_max, logits.amax(dim=1))
        logits -= new_max[:, None]
        run_sum = run_sum * torch.exp(run_max - new_max) + logits.exp_().sum(dim=1)
        run_max = new_max
    return run_max + torch.log(run_sum)


def _scatter_pairs(
    values: torch.Tensor, rows: torch.Tensor, pair_w: torch.Tensor, n_teacher: int
) -> torch.Tensor:
    """sum over pairs (n, p) with t[n, p] = m of weight * values[n] -> [Nt, ...]."""
    out = values.new_zeros((n_teacher, *values.shape[1:]))
    for p in range(rows.shape[1]):
        w = pair_w[:, p].reshape(-1, *([1] * (values.dim() - 1)))
        out.index_add_(0, rows[:, p], values * w)
    return out


def _gather_pairs(values: torch.Tensor, rows: torch.Tensor, pair_w: torch.Tensor) -> torch.Tensor:
    """sum_p weight[n, p] * values[t[n, p]] -> [Ns, ...]."""
    out = values.new_zeros((rows.shape[0], *values.shape[1:]))
    for p in range(rows.shape[1]):
        w = pair_w[:, p].reshape(-1, *([1] * (values.dim() - 1)))
        out += values.index_select(0, rows[:, p]) * w
    return out


@dataclass(frozen=True)
class ForwardPass:
    """The forward's second pass over K: the student side's log-sum-exp and the teacher side's
    sums, with q [Nt, K] the teacher softmax; all in the compute dtype.

    student_lse      [Ns], lse_k(a[n]).
    col_sum          [K], sum_m q[m, k]: the teacher column sums.
    expected_protos  [Nt, D], V = q @ w_s: each teacher row's mean of the student prototypes
                     under its q, so <y_s[n], V[t]> / tau_s + u[t] is pair (n, t)'s cross term.
    expected_bias    [Nt], u = q @ bias_s.
    target_grad_w    [K, D], q^T Z: the targets' term of tau_s dL/dw_s, which the backward
                     reuses as the prototype gradient buffer; None unless need_w.
    target_grad_b    [K], q^T c: the targets' term of dL/dbias_s.
    """

    student_lse: torch.Tensor
    col_sum: torch.Tensor
    expected_protos: torch.Tensor
    expected_bias: torch.Tensor
    target_grad_w: torch.Tensor | None
    target_grad_b: torch.Tensor


def _teacher_pass(
    ys: torch.Tensor,
    ws: torch.Tensor,
    bs: torch.Tensor,
    yt: torch.Tensor,
    wt: torch.Tensor,
    bt: torch.Tensor,
    rows: torch.Tensor,
    pair_w: torch.Tensor,
    lse_t: torch.Tensor,
    inv_ts: float,
    inv_tt: float,
    block: int,
    need_w: bool,
) -> ForwardPass:
    """One pass over K of the student rows `ys` [Ns, D] and the teacher rows `yt` [Nt, D] (teacher
    log-sum-exp lse_t [Nt]; pair table rows, pair_w [Ns, P]) -> ForwardPass."""
    k, nt = ws.shape[0], yt.shape[0]
    z = _scatter_pairs(ys, rows, pair_w, nt) if need_w else None  # [Nt, D]
    c = _scatter_pairs(pair_w.new_ones(ys.shape[0]), rows, pair_w, nt)  # [Nt]
    run_max = ys.new_full((ys.shape[0],), float("-inf"))
    run_sum = ys.new_zeros(ys.shape[0])
    col_sum, v, u = ys.new_empty(k), yt.new_zeros(nt, ws.shape[1]), yt.new_zeros(nt)
    qz = torch.empty(k, ws.shape[1], dtype=ys.dtype, device=ws.device) if need_w else None
    qc = ys.new_empty(k)
    for blk in _blocks(k, block):
        a = _tile(ys, ws[blk], bs[blk], inv_ts)  # [Ns, block]
        new_max = torch.maximum(run_max, a.amax(dim=1))
        a -= new_max[:, None]
        run_sum = run_sum * torch.exp(run_max - new_max) + a.exp_().sum(dim=1)
        run_max = new_max
        q = _tile(yt, wt[blk], bt[blk], inv_tt).sub_(lse_t[:, None]).exp_()  # [Nt, block]
        col_sum[blk] = q.sum(dim=0)
        v.addmm_(q, ws[blk].to(ys.dtype))
        u.addmv_(q, bs[blk])
        qc[blk] = q.T @ c
        if qz is not None and z is not None:
            torch.mm(q.T, z, out=qz[blk])
    return ForwardPass(run_max + torch.log(run_sum), col_sum, v, u, qz, qc)


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        student,
        student_protos,
        bias_s,
        teacher,
        teacher_protos,
        bias_t,
        targets,
        weights,
        inv_ts: float,
        inv_tt: float,
        block: int,
    ):
        cd = compute_dtype(student.dtype)
        rows, pair_w = pair_table(targets, weights, cd)
        ys, ws, bs = student.detach().to(cd), student_protos.detach(), bias_s.detach()
        yt, wt, bt = teacher.detach().to(cd), teacher_protos.detach(), bias_t.detach().to(cd)
        lse_t = _row_lse(yt, wt, bt, inv_tt, block)  # [Nt]
        need_w = ctx.needs_input_grad[1]
        fwd = _teacher_pass(
            ys, ws, bs, yt, wt, bt, rows, pair_w, lse_t, inv_ts, inv_tt, block, need_w
        )
        lse_s, v, u = fwd.student_lse, fwd.expected_protos, fwd.expected_bias  # [Ns], [Nt, D], [Nt]
        row_w = pair_w.sum(dim=1)  # [Ns]
        cross = (ys * _gather_pairs(v, rows, pair_w)).sum() * inv_ts + (pair_w * u[rows]).sum()
        loss = (row_w * lse_s).sum() - cross
        qz, qc = fwd.target_grad_w, fwd.target_grad_b  # [K, D] or None, [K]
        ctx.save_for_backward(student, student_protos, bias_s, rows, pair_w, lse_s, v, qz, qc)
        ctx.inv_ts, ctx.block = inv_ts, block
        mean_probs = fwd.col_sum / teacher.shape[0]
        ctx.mark_non_differentiable(mean_probs)
        return loss, mean_probs

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_probs: torch.Tensor):
        student, ws, bs, rows, pair_w, lse_s, v, qz, qc = ctx.saved_tensors
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        cd, inv_ts = lse_s.dtype, ctx.inv_ts
        ys = student.to(cd)
        # W[n] softmax(a[n]) = exp(a[n] - (lse[n] - log W[n])); rows with W = 0 give exp(-inf) = 0
        shift = (lse_s - torch.log(pair_w.sum(dim=1)))[:, None]  # [Ns, 1]
        grad_y = -_gather_pairs(v, rows, pair_w) if need_y else None  # [Ns, D]
        grad_w = qz.neg_() if need_w else None  # [K, D], reuses the saved buffer
        grad_b = -qc if need_b else None  # [K]
        for blk in _blocks(ws.shape[0], ctx.block):
            a = _tile(ys, ws[blk], bs[blk], inv_ts)  # [Ns, block]
            p = a.sub_(shift).exp_()  # W[n] softmax(a[n]) on this block
            if grad_y is not None:
                grad_y.addmm_(p, ws[blk].to(cd))
            if grad_w is not None:
                grad_w[blk].addmm_(p.T, ys)
            if grad_b is not None:
                grad_b[blk] += p.sum(dim=0)
        scale = grad_loss.to(cd)  # in place below: no second [K, D] buffer
        out_y = None if grad_y is None else grad_y.mul_(scale * inv_ts).to(student.dtype)
        out_w = None if grad_w is None else grad_w.mul_(scale * inv_ts).to(ws.dtype)
        out_b = None if grad_b is None else grad_b.mul_(scale).to(bs.dtype)
        return out_y, out_w, out_b, None, None, None, None, None, None, None, None


def prototype_cross_entropy_chunked(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_protos: torch.Tensor,
    teacher_protos: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (scalar) and teacher_mean_probs [K], streaming over K in `block`-sized pieces."""
    if block is None:
        block = default_block(max(student.shape[0], teacher.shape[0]), student.device)
    if block < 1:
        raise ValueError(f"block must be a positive number of prototypes, got {block}")
    bias_s = student_bias(student_protos, student_temp, vmf)  # [K], autograd through ||w_s||
    bias_t = teacher_bias(teacher_protos, center, teacher_temp, vmf)  # [K], no grad
    loss, mean_probs = _ChunkedLoss.apply(
        student,
        student_protos,
        bias_s,
        teacher,
        teacher_protos,
        bias_t,
        targets,
        weights,
        1.0 / student_temp,
        1.0 / teacher_temp,
        block,
    )
    return loss, mean_probs


def teacher_statistics_chunked(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp [Nt] and column mean probabilities [K] of the teacher logits."""
    if block is None:
        block = default_block(teacher.shape[0], teacher.device)
    if block < 1:
        raise ValueError(f"block must be a positive number of prototypes, got {block}")
    with torch.no_grad():
        cd = compute_dtype(teacher.dtype)
        yt, wt = teacher.to(cd), teacher_protos
        bias_t = teacher_bias(teacher_protos, center, teacher_temp, vmf)
        inv_tt = 1.0 / teacher_temp
        lse = _row_lse(yt, wt, bias_t, inv_tt, block)  # [Nt]
        col_sum = yt.new_empty(wt.shape[0])
        for blk in _blocks(wt.shape[0], block):
            q = torch.exp(_tile(yt, wt[blk], bias_t[blk], inv_tt) - lse[:, None])  # [Nt, block]
            col_sum[blk] = q.sum(dim=0)
    return lse, col_sum / teacher.shape[0]
