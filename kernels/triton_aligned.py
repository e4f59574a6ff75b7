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

The sweep's row blocks add dW atomically. Where BLOCK_OVERRIDES asks for it (an A/B run), dW
and dB come instead from a second sweep whose programs own prototype blocks
(`_aligned_column_kernel`, no atomic adds), and the first makes dY alone: 8 passes. Where it
also asks for flash row sweeps (`_row_flash_kernel`), the two log-sum-exp sweeps make p @ w_s
and q @ w_s too, which give dY and the cross term, and the column sweep the column sums: 7
passes and no atomic adds at all (_flash_sweeps).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
from fastproto.kernels.common import student_bias, teacher_bias
from fastproto.kernels.triton_kernels import _aligned_column_kernel, _aligned_grad_kernel
from fastproto.kernels.triton_loss import (
    _check_input,
    _config,
    _dot_dtype,
    _row_flash,
    _row_lse,
    _row_splits,
    _splits,
    _teacher_lse,
    column_dw_config,
    flash_config,
    fuses_backward,
    mix_config,
    override_blocks,
    prototype_cross_entropy_triton,
)
from torch import Tensor


def aligned_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The sweep's sizes from the forward's `cfg` (mix_config's, or BLOCK_OVERRIDES' for this
    kernel where an A/B run sets them), or None where the general kernels run instead:
    BLOCK_D = 1024, where the fused backward is two launches, and compiled float32 at every
    width, whose IEEE dots spilled 280-5500 B per thread at each BLOCK_D >= 64 on sm_80 and
    sm_90 (bench/results/kernel_compile_table.md has the sizes kept)."""
    out = mix_config(cfg)
    if not fuses_backward(out) or (out["IEEE"] and not out["CAST_FP32"]):
        return None
    return override_blocks("_aligned_grad_kernel", out)


Sweep = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def _aligned_sweep(ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w, raw: tuple[Tensor, Tensor] | None,
                   inv_ts: float, inv_tt: float, cfg: dict[str, Any], need_y: bool,
                   need_w: bool) -> Sweep:  # fmt: skip
    """One launch -> (cross [N], teacher column sums [K], dY [N, D] or None, dW [K, D] and
    dB [K] or None, uncentred column sums [K] or None), all float32 and unscaled (dY, dW still
    to be divided by tau_s). raw = (center [K], uncentred lse [N]) makes bt the uncentred bias
    and adds the uncentred column sums."""
    n, (k, d), dev = ys.shape[0], ws.shape, ys.device
    n_splits, per_split = _splits(n, k, cfg)
    cross = torch.empty(n_splits, n, dtype=torch.float32, device=dev)  # [S, N] partials
    col_q = torch.zeros(k, dtype=torch.float32, device=dev)
    dy = torch.empty(n_splits, n, d, dtype=torch.float32, device=dev) if need_y else None
    dw = torch.zeros(k, d, dtype=torch.float32, device=dev) if need_w else None
    db = torch.zeros(k, dtype=torch.float32, device=dev) if need_w else None
    col_p0 = torch.zeros(k, dtype=torch.float32, device=dev) if raw is not None else None
    center, lse0 = raw if raw is not None else (col_q, cross)  # unread stand-ins without raw
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    _aligned_grad_kernel[grid](ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w,
                               cross if dy is None else dy, cross if dw is None else dw,
                               cross if db is None else db, col_q, cross, center, lse0,
                               col_q if col_p0 is None else col_p0, n, k, d, inv_ts, inv_tt,
                               per_split, **cfg, HAS_DY=need_y, HAS_DW=need_w,
                               HAS_RAW=raw is not None)  # fmt: skip
    return cross.sum(dim=0), col_q, None if dy is None else dy.sum(dim=0), dw, db, col_p0


Column = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


def _aligned_column(ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w, inv_ts: float, inv_tt: float,
                    cfg: dict[str, Any], col: bool = False,
                    raw: tuple[Tensor, Tensor] | None = None) -> Column:  # fmt: skip
    """dW [K, D] and dB [K] (float32, unscaled as _aligned_sweep's) from programs that own
    prototype blocks, and with `col` the teacher column sums [K] and, with raw = (center [K],
    uncentred lse [N]), the uncentred ones [K] (else None): no atomic adds, the row splits'
    partials added up here, so all are deterministic. bt: the centred teacher bias."""
    (k, d), n, dev = ws.shape, ys.shape[0], ys.device
    n_splits, per_split = _row_splits(n, k, cfg)
    dw = torch.empty(n_splits, k, d, dtype=torch.float32, device=dev)  # [S, K, D]
    has_col, has_raw = col or raw is not None, raw is not None
    written = 1 + has_col + has_raw  # rows of `sums` the kernel writes: dB[, col[, col0]]
    sums = torch.empty(3, n_splits, k, dtype=torch.float32, device=dev)  # [3, S, K]
    center, lse0 = raw if raw is not None else (bt, lse_t)  # unread stand-ins without raw
    grid = (triton.cdiv(k, cfg["BLOCK_K"]), n_splits)
    _aligned_column_kernel[grid](ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w, dw, sums[0],
                                 sums[1], center, lse0, sums[2], n, k, d, inv_ts, inv_tt,
                                 per_split, **cfg, HAS_COL=has_col,
                                 HAS_RAW=has_raw)  # fmt: skip
    dw_sum = dw[0] if n_splits == 1 else dw.sum(dim=0)  # no [K, D] copy with one split
    totals = list(sums[:written].sum(dim=1)) + [None] * (3 - written)  # [K] each, or None
    return dw_sum, totals[0], totals[1], totals[2]


def _gradient_sweeps(ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w,
                     raw: tuple[Tensor, Tensor] | None, inv_ts: float, inv_tt: float,
                     cfg: dict[str, Any], need_y: bool, need_w: bool) -> Sweep:  # fmt: skip
    """_aligned_sweep's results (arguments alike; `cfg` the forward's sizes): from the one
    sweep, or where column_dw_config applies, dY from it and dW, dB from _aligned_column."""
    sweep_cfg = aligned_config(cfg)
    assert sweep_cfg is not None  # the entry point takes the general path otherwise
    col_cfg = column_dw_config(mix_config(cfg), "_aligned_column_kernel") if need_w else None
    out = _aligned_sweep(ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w, raw, inv_ts, inv_tt,
                         sweep_cfg, need_y, need_w and col_cfg is None)  # fmt: skip
    if col_cfg is None:
        return out
    centred_bt = bt if raw is None else bt - raw[0]  # [K]
    dw, db, _, _ = _aligned_column(ys, ws, bs, lse_s, yt, wt, centred_bt, lse_t, row_w, inv_ts,
                                   inv_tt, col_cfg)  # fmt: skip
    return out[0], out[1], out[2], dw, db, out[5]


def _flash_sweeps(ys, ws, bs, yt, wt, bt, raw_center: Tensor | None, row_w: Tensor,
                  inv_ts: float, inv_tt: float, flash_cfg: dict[str, Any],
                  col_cfg: dict[str, Any]) -> tuple[Tensor, Sweep]:  # fmt: skip
    """The loss and both gradients with no atomic adds, 7 passes: the two row log-sum-exp sweeps
    also make p @ w_s and q @ w_s (`_row_flash_kernel`), so dY = W (p - q) @ w_s and the cross
    term sum_k q a = <y_s, q @ w_s> / tau_s + q @ bias_s need no further tile; one sweep owned
    by prototype blocks then makes dW, dB and the column sums. -> (lse_s [N], _aligned_sweep's
    results, dY and dW given)."""
    center = None if raw_center is None else raw_center.detach().float().contiguous()
    lse_t, lse0, q_ws, q_bs = _row_flash(yt, wt, bt, center, ws, bs, inv_tt, flash_cfg)
    lse_s, _, p_ws, _ = _row_flash(ys, ws, bs, None, None, None, inv_ts, flash_cfg)
    cross = (ys.float() * q_ws).sum(dim=1) * inv_ts + q_bs  # [N]
    dy = row_w[:, None] * (p_ws - q_ws)  # [N, D]
    raw = None if center is None else (center, lse0)
    centred_bt = bt if center is None else bt - center  # [K]
    dw, db, col_q, col_p0 = _aligned_column(ys, ws, bs, lse_s, yt, wt, centred_bt, lse_t, row_w,
                                            inv_ts, inv_tt, col_cfg, True, raw)  # fmt: skip
    assert col_q is not None
    return lse_s, (cross, col_q, dy, dw, db, col_p0)


def _flash_configs(cfg: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(row sweep sizes, column sweep sizes) of _flash_sweeps where BLOCK_OVERRIDES asks for
    both (the `triton-flash` A/B), else (None, None)."""
    flash_cfg = flash_config(cfg)
    col_cfg = column_dw_config(mix_config(cfg), "_aligned_column_kernel")
    return (flash_cfg, col_cfg) if flash_cfg is not None and col_cfg is not None else (None, None)


class _AlignedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student, student_protos, bias_s, teacher, teacher_protos, bias_t,
                raw_center, weights, inv_ts: float, inv_tt: float, grad_on: bool):  # fmt: skip
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
        flash_cfg, col_cfg = _flash_configs(cfg) if need_y and need_w else (None, None)
        if flash_cfg is not None and col_cfg is not None:
            lse_s, sweep = _flash_sweeps(ys, ws, bs, yt, wt, bt, raw_center, row_w, inv_ts,
                                         inv_tt, flash_cfg, col_cfg)  # fmt: skip
        else:
            lse_t, raw = _teacher_lse(yt, wt, bt, raw_center, inv_tt, cfg)  # [N], raw or None
            lse_s = _row_lse(ys, ws, bs, inv_ts, cfg)  # [N]
            sweep = _gradient_sweeps(ys, ws, bs, lse_s, yt, wt, bt, lse_t, row_w, raw, inv_ts,
                                     inv_tt, cfg, need_y, need_w)  # fmt: skip
        cross, col_q, dy, dw, db, col_p0 = sweep
        ctx.save_for_backward(dy, dw, db)
        ctx.inv_ts, ctx.dtypes = inv_ts, (student.dtype, student_protos.dtype)
        mean_probs = col_q / ys.shape[0]
        raw_means = col_q.new_empty(0) if col_p0 is None else col_p0 / ys.shape[0]
        ctx.mark_non_differentiable(mean_probs, raw_means)
        return (row_w * (lse_s - cross)).sum(), mean_probs, raw_means

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_probs: Tensor, _grad_raw: Tensor):
        dy, dw, db = ctx.saved_tensors
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        scale = grad_loss.float()
        out_y = dy * (scale * ctx.inv_ts) if need_y and dy is not None else None
        out_w = dw * (scale * ctx.inv_ts) if need_w and dw is not None else None
        out_b = db * scale if need_b and db is not None else None
        return (None if out_y is None else out_y.to(ctx.dtypes[0]),
                None if out_w is None else out_w.to(ctx.dtypes[1]), out_b,
                None, None, None, None, None, None, None, None)  # fmt: skip


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
            student, teacher, student_protos, teacher_protos, targets, weights[:, None], center,
            student_temp, teacher_temp, vmf, raw_means,
        )  # fmt: skip
    bias_s = student_bias(student_protos, student_temp, vmf).float()  # [K], autograd via ||w_s||
    # with raw_means the kernels take the uncentred bias and subtract the centre themselves
    bias_t = teacher_bias(teacher_protos, torch.zeros_like(center) if raw_means else center,
                          teacher_temp, vmf).float()  # fmt: skip
    loss, mean_probs, raw = _AlignedLoss.apply(
        student, student_protos, bias_s, teacher, teacher_protos, bias_t,
        center if raw_means else None, weights, 1.0 / student_temp, 1.0 / teacher_temp,
        torch.is_grad_enabled(),
    )  # fmt: skip
    return loss, mean_probs, raw if raw_means else None
