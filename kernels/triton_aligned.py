"""The Triton prototype loss for aligned rows: student row n against teacher row n (iBOT).

With one teacher row per student row, weight W[n], q = softmax(b) and p = softmax(a):

    loss = sum_n W[n] (lse_s[n] - sum_k q[n, k] a[n, k])
    dL/da = g = W (p - q),   dL/dy_s = g @ w_s / tau_s,   dL/dw_s = g^T y_s / tau_s,
    dL/dbias_s = g^T 1

The forward makes the two row log-sum-exps (`_row_lse_kernel`, one sweep each) and then one
sweep (`_aligned_grad_kernel`) that forms each student and teacher tile once and takes from g
both products, dY and dW, along with the loss's cross term: 6 passes of 2 N K D FLOPs in all,
where the general pair table (kernels/triton_loss.py) needs 9 (bench/results/kernel_passes.md).
The gradients are made in the forward, as fused linear cross-entropy does, and the backward
only scales them: the [K, D] float32 dW is held from forward to backward, as the general path
holds q^T Z. Without grad mode the sweep makes only the loss and the column sums (4 passes).
The sweep's row blocks add dW, dB and the column sums atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
from fastproto.kernels.common import student_bias, teacher_bias
from fastproto.kernels.triton_kernels import _aligned_grad_kernel
from fastproto.kernels.triton_loss import (
    _check_input,
    _config,
    _dot_dtype,
    _row_lse,
    _splits,
    _teacher_lse,
    fuses_backward,
    mix_config,
    prototype_cross_entropy_triton,
)
from torch import Tensor


def aligned_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The sweep's sizes from the forward's `cfg` (mix_config's), or None where the general
    kernels run instead: BLOCK_D = 1024, where the fused backward is two launches, and compiled
    float32 at every width (its IEEE dots on both models' tiles spill from BLOCK_D = 64 on)."""
    out = mix_config(cfg)
    if not fuses_backward(out) or (out["IEEE"] and not out["CAST_FP32"]):
        return None
    return out


@dataclass(frozen=True)
class AlignedSweep:
    """What one _aligned_grad_kernel launch makes over N aligned rows and K prototypes; all
    float32, the gradients unscaled: grad_y and grad_w still to be divided by tau_s, and all
    three multiplied by the upstream gradient.

    cross        [N], sum_k q[n, k] a[n, k]: each row's cross term.
    col_sum      [K], sum_n q[n, k]: the teacher column sums.
    grad_y       [N, D], dL/da @ w_s; None unless the student rows need a gradient.
    grad_w       [K, D], dL/da^T @ y_s; None unless the prototypes need a gradient.
    grad_b       [K], dL/da^T 1; None exactly when grad_w is.
    raw_col_sum  [K], the column sums of the uncentred teacher softmax, only with a raw centre
                 (else None).
    """

    cross: Tensor
    col_sum: Tensor
    grad_y: Tensor | None
    grad_w: Tensor | None
    grad_b: Tensor | None
    raw_col_sum: Tensor | None


def _aligned_sweep(
    ys: Tensor,
    ws: Tensor,
    bs: Tensor,
    lse_s: Tensor,
    yt: Tensor,
    wt: Tensor,
    bt: Tensor,
    lse_t: Tensor,
    row_w: Tensor,
    raw: tuple[Tensor, Tensor] | None,
    inv_ts: float,
    inv_tt: float,
    cfg: dict[str, Any],
    need_y: bool,
    need_w: bool,
) -> AlignedSweep:
    """One launch over the student rows `ys` [N, D] against the teacher rows `yt` [N, D], with
    their log-sum-exps lse_s, lse_t [N] and row weights row_w [N] -> AlignedSweep (grad_y with
    need_y, grad_w and grad_b with need_w). raw = (center [K], uncentred lse [N]) makes bt the
    uncentred bias and adds the uncentred column sums."""
    n, (k, d), dev = ys.shape[0], ws.shape, ys.device
    n_splits, per_split = _splits(n, k, cfg)
    cross = torch.empty(n_splits, n, dtype=torch.float32, device=dev)  # [S, N] partials
    col_q = torch.zeros(k, dtype=torch.float32, device=dev)
    dy = torch.empty(n_splits, n, d, dtype=torch.float32, device=dev) if need_y else None
    dw = torch.zeros(k, d, dtype=torch.float32, device=dev) if need_w else None
    db = torch.zeros(k, dtype=torch.float32, device=dev) if need_w else None
    col_p0 = torch.zeros(k, dtype=torch.float32, device=dev) if raw is not None else None
    # Triton wants a pointer per argument: those a False HAS_* flag leaves unused get stand-ins
    center, lse0 = raw if raw is not None else (col_q, cross)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    _aligned_grad_kernel[grid](
        ys,
        ws,
        bs,
        lse_s,
        yt,
        wt,
        bt,
        lse_t,
        row_w,
        cross if dy is None else dy,
        cross if dw is None else dw,
        cross if db is None else db,
        col_q,
        cross,
        center,
        lse0,
        col_q if col_p0 is None else col_p0,
        n,
        k,
        d,
        inv_ts,
        inv_tt,
        per_split,
        **cfg,
        HAS_DY=need_y,
        HAS_DW=need_w,
        HAS_RAW=raw is not None,
    )
    grad_y = None if dy is None else dy.sum(dim=0)  # [N, D]
    return AlignedSweep(cross.sum(dim=0), col_q, grad_y, dw, db, col_p0)


class _AlignedLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        student,
        student_protos,
        bias_s,
        teacher,
        teacher_protos,
        bias_t,
        raw_center,
        weights,
        inv_ts: float,
        inv_tt: float,
        grad_on: bool,
    ):
        # raw_center None: bias_t is the centred bias. A [K] tensor: bias_t is the uncentred
        # one, and the uncentred mean probabilities come back too (else an empty tensor).
        dt = _dot_dtype([student, teacher], [student_protos, teacher_protos])
        cfg = _config(student.shape[1], dt)
        ys, ws = student.detach().to(dt).contiguous(), student_protos.detach().to(dt).contiguous()
        yt, wt = teacher.detach().to(dt).contiguous(), teacher_protos.detach().to(dt).contiguous()
        bs, bt = bias_s.detach().float().contiguous(), bias_t.detach().float().contiguous()
        row_w = weights.detach().float().contiguous()  # [N]
        need_y = grad_on and ctx.needs_input_grad[0]
        need_w = grad_on and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        sweep_cfg = aligned_config(cfg)
        assert sweep_cfg is not None  # the entry point takes the general path otherwise
        lse_t, raw = _teacher_lse(yt, wt, bt, raw_center, inv_tt, cfg)  # [N], raw or None
        lse_s = _row_lse(ys, ws, bs, inv_ts, cfg)  # [N]
        sweep = _aligned_sweep(
            ys,
            ws,
            bs,
            lse_s,
            yt,
            wt,
            bt,
            lse_t,
            row_w,
            raw,
            inv_ts,
            inv_tt,
            sweep_cfg,
            need_y,
            need_w,
        )
        ctx.save_for_backward(sweep.grad_y, sweep.grad_w, sweep.grad_b)
        ctx.inv_ts, ctx.dtypes = inv_ts, (student.dtype, student_protos.dtype)
        mean_probs = sweep.col_sum / ys.shape[0]
        raw_sum = sweep.raw_col_sum  # [K] or None
        raw_means = sweep.col_sum.new_empty(0) if raw_sum is None else raw_sum / ys.shape[0]
        ctx.mark_non_differentiable(mean_probs, raw_means)
        return (row_w * (lse_s - sweep.cross)).sum(), mean_probs, raw_means

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_probs: Tensor, _grad_raw: Tensor):
        dy, dw, db = ctx.saved_tensors
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        scale = grad_loss.float()
        out_y = dy * (scale * ctx.inv_ts) if need_y and dy is not None else None
        out_w = dw * (scale * ctx.inv_ts) if need_w and dw is not None else None
        out_b = db * scale if need_b and db is not None else None
        return (
            None if out_y is None else out_y.to(ctx.dtypes[0]),
            None if out_w is None else out_w.to(ctx.dtypes[1]),
            out_b,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def aligned_cross_entropy_triton(
    student: Tensor,
    teacher: Tensor,
    student_protos: Tensor,
    teacher_protos: Tensor,
    weights: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
    raw_means: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Loss (float32 scalar), teacher_mean_probs [K] and, with raw_means, the mean of the
    uncentred teacher softmax [K] (probability centring's batch statistic; else None), for
    student row n against teacher row n with weight weights[n] ([N]). The general kernels
    where the sweep is not fused."""
    dt = _dot_dtype([student, teacher], [student_protos, teacher_protos])
    _check_input(student.shape[1], dt)
    if aligned_config(_config(student.shape[1], dt)) is None:
        targets = torch.arange(student.shape[0], device=student.device)[:, None]
        return prototype_cross_entropy_triton(
            student,
            teacher,
            student_protos,
            teacher_protos,
            targets,
            weights[:, None],
            center,
            student_temp,
            teacher_temp,
            vmf,
            raw_means,
        )
    bias_s = student_bias(student_protos, student_temp, vmf).float()  # [K], autograd via ||w_s||
    # with raw_means the kernels take the uncentred bias and subtract the centre themselves
    bias_t = teacher_bias(
        teacher_protos, torch.zeros_like(center) if raw_means else center, teacher_temp, vmf
    ).float()
    loss, mean_probs, raw = _AlignedLoss.apply(
        student,
        student_protos,
        bias_s,
        teacher,
        teacher_protos,
        bias_t,
        center if raw_means else None,
        weights,
        1.0 / student_temp,
        1.0 / teacher_temp,
        torch.is_grad_enabled(),
    )
    return loss, mean_probs, raw if raw_means else None
