"""Prototype cross-entropy streamed over K in blocks: PyTorch twin of the Triton kernels.

Same math as kernels/reference.py, never an [Ns, K] or [Nt, K] tensor: only [N, block] tiles.

    a[n, k] = <w_s[k], y_s[n]> / tau_s + bias_s[k]      (tile [Ns, block])
    q[m, k] = softmax_k(<w_t[k], y_t[m]> / tau_t + bias_t[k])   (tile [Nt, block])
    Q[n, k] = sum_p pair_w[n, p] q[rows[n, p], k]       (tile [Ns, block])
    W[n]    = sum_p pair_w[n, p]
    loss    = sum_n W[n] lse_k(a[n]) - sum_{n,k} Q[n, k] a[n, k]
    dL/da   = G[n, k] = W[n] softmax_k(a[n])[k] - Q[n, k]

Forward: pass 1 gets the teacher row log-sum-exp; pass 2 the student log-sum-exp (online, as in
flash attention), the cross term sum(Q * a) and the teacher column sums. Backward recomputes the
tiles (as Cut Cross-Entropy and fused linear cross-entropy do) and forms
dL/dy_s = G @ w_s / tau_s, dL/dw_s = G^T @ y_s / tau_s, dL/dbias_s = column sums of G.
The vMF bias is computed outside the autograd.Function, so its own autograd carries the bias
gradient on to ||w_s[k]||.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from fastproto.kernels.common import compute_dtype, pair_table, student_bias, teacher_bias

# Prototypes per block (CPU timings: bench/results/prototype_loss_cpu.md).
DEFAULT_BLOCK = 2048


def _blocks(k: int, block: int) -> Iterator[slice]:
    for start in range(0, k, block):
        yield slice(start, min(start + block, k))


def _tile(rows: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor, inv_temp: float):
    """Tempered logits of `rows` [N, D] against one block of prototypes -> [N, block]."""
    return torch.addmm(bias, rows, protos.to(rows.dtype).T, alpha=inv_temp)


def _row_lse(rows: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor, inv_temp: float,
             block: int) -> torch.Tensor:  # fmt: skip
    """log-sum-exp over all K of each row's logits [N], streaming with a running max."""
    run_max = rows.new_full((rows.shape[0],), float("-inf"))
    run_sum = rows.new_zeros(rows.shape[0])
    for blk in _blocks(protos.shape[0], block):
        logits = _tile(rows, protos[blk], bias[blk], inv_temp)  # [N, block]
        new_max = torch.maximum(run_max, logits.amax(dim=1))
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(
            1
        )
        run_max = new_max
    return run_max + torch.log(run_sum)


def _target_tile(q: torch.Tensor, rows: torch.Tensor, pair_w: torch.Tensor) -> torch.Tensor:
    """Q tile [Ns, block]: the weighted sum of each student row's paired teacher probabilities."""
    out = q.new_zeros(rows.shape[0], q.shape[1])
    for p in range(rows.shape[1]):
        out.addcmul_(q.index_select(0, rows[:, p]), pair_w[:, p, None])
    return out


class _Stream:
    """The saved inputs of one call, and the per-block tiles both passes recompute."""

    def __init__(self, ys, ws, bs, yt, wt, bt, rows, pair_w, inv_ts, inv_tt, lse_t) -> None:
        self.ys, self.ws, self.bs, self.yt, self.wt, self.bt = ys, ws, bs, yt, wt, bt
        self.rows, self.pair_w, self.inv_ts, self.inv_tt, self.lse_t = (
            rows, pair_w, inv_ts, inv_tt, lse_t,
        )  # fmt: skip

    def student(self, blk: slice) -> torch.Tensor:
        return _tile(self.ys, self.ws[blk], self.bs[blk], self.inv_ts)  # [Ns, block]

    def teacher_probs(self, blk: slice) -> torch.Tensor:
        b = _tile(self.yt, self.wt[blk], self.bt[blk], self.inv_tt)  # [Nt, block]
        return torch.exp(b - self.lse_t[:, None])


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student, student_protos, bias_s, teacher, teacher_protos, bias_t,
                targets, weights, inv_ts: float, inv_tt: float, block: int):  # fmt: skip
        cd = compute_dtype(student.dtype)
        rows, pair_w = pair_table(targets, weights, cd)
        yt, bt = teacher.detach().to(cd), bias_t.detach().to(cd)
        lse_t = _row_lse(yt, teacher_protos.detach(), bt, inv_tt, block)  # [Nt]
        st = _Stream(student.detach().to(cd), student_protos.detach(), bias_s.detach(), yt,
                     teacher_protos.detach(), bt, rows, pair_w, inv_ts, inv_tt, lse_t)  # fmt: skip
        k = student_protos.shape[0]
        run_max = st.ys.new_full((st.ys.shape[0],), float("-inf"))
        run_sum = st.ys.new_zeros(st.ys.shape[0])
        cross = st.ys.new_zeros(())
        col_sum = st.ys.new_empty(k)
        for blk in _blocks(k, block):
            a = st.student(blk)  # [Ns, block]
            q = st.teacher_probs(blk)  # [Nt, block]
            col_sum[blk] = q.sum(dim=0)
            cross += (_target_tile(q, rows, pair_w) * a).sum()
            new_max = torch.maximum(run_max, a.amax(dim=1))
            run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(a - new_max[:, None]).sum(
                1
            )
            run_max = new_max
        lse_s = run_max + torch.log(run_sum)  # [Ns]
        loss = (pair_w.sum(dim=1) * lse_s).sum() - cross
        ctx.save_for_backward(student, student_protos, bias_s, teacher, teacher_protos, bias_t,
                              targets, weights, lse_s, lse_t)  # fmt: skip
        ctx.temps, ctx.block = (inv_ts, inv_tt), block
        mean_probs = col_sum / teacher.shape[0]
        ctx.mark_non_differentiable(mean_probs)
        return loss, mean_probs

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_probs: torch.Tensor):
        ys, ws, bs, yt, wt, bt, targets, weights, lse_s, lse_t = ctx.saved_tensors
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        cd = lse_s.dtype
        rows, pair_w = pair_table(targets, weights, cd)
        inv_ts, inv_tt = ctx.temps
        st = _Stream(ys.to(cd), ws, bs, yt.to(cd), wt, bt, rows, pair_w, inv_ts, inv_tt, lse_t)
        row_w = pair_w.sum(dim=1, keepdim=True)  # [Ns, 1]
        grad_y = torch.zeros_like(st.ys) if need_y else None
        grad_w = torch.zeros(ws.shape, dtype=cd, device=ws.device) if need_w else None
        grad_b = torch.zeros(bs.shape, dtype=cd, device=bs.device) if need_b else None
        for blk in _blocks(ws.shape[0], ctx.block):
            a = st.student(blk)  # [Ns, block]
            g = torch.exp(a - lse_s[:, None]).mul_(row_w)
            g -= _target_tile(st.teacher_probs(blk), rows, pair_w)  # G = dL/da [Ns, block]
            if grad_y is not None:
                grad_y.addmm_(g, ws[blk].to(cd))
            if grad_w is not None:
                grad_w[blk] = g.T @ st.ys
            if grad_b is not None:
                grad_b[blk] = g.sum(dim=0)
        scale = grad_loss.to(cd)  # in place below: no second [K, D] buffer
        out_y = None if grad_y is None else grad_y.mul_(scale * inv_ts).to(ys.dtype)
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
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (scalar) and teacher_mean_probs [K], streaming over K in `block`-sized pieces."""
    if block < 1:
        raise ValueError(f"block must be a positive number of prototypes, got {block}")
    bias_s = student_bias(student_protos, student_temp, vmf)  # [K], autograd through ||w_s||
    bias_t = teacher_bias(teacher_protos, center, teacher_temp, vmf)  # [K], no grad
    loss, mean_probs = _ChunkedLoss.apply(
        student, student_protos, bias_s, teacher, teacher_protos, bias_t,
        targets, weights, 1.0 / student_temp, 1.0 / teacher_temp, block,
    )  # fmt: skip
    return loss, mean_probs


def teacher_statistics_chunked(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp [Nt] and column mean probabilities [K] of the teacher logits."""
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
