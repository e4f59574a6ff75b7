"""Launchers, autograd.Function and public entry points of the Triton prototype loss.

Math and notation: kernels/chunked.py (the PyTorch twin) and kernels/triton_kernels.py.

Forward:  lse_t [Nt] and lse_s [Ns] from _row_lse_kernel (partials [S, N] merged here),
          col_sum [K] and per-K-block cross sums from _columns_kernel;
          loss = sum_n W[n] lse_s[n] - sum(cross).
Backward: dW_s [K, D], dbias_s [K] from _grad_protos_kernel; dY_s partials [S, Ns, D] from
          _grad_rows_kernel, summed here. Scratch memory is O(S * N * D + K), never O(N * K).

Inputs may be float32, float16 or bfloat16 (accumulation in float32). Block sizes are fixed, not
autotuned: the interpreter cannot autotune, and nothing here queries the GPU at import time.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
from fastproto.kernels.common import pair_table, student_bias, teacher_bias
from fastproto.kernels.triton_kernels import (
    _columns_kernel,
    _grad_protos_kernel,
    _grad_rows_kernel,
    _row_lse_kernel,
)

MAX_DIM = 1024  # a whole row of D is held in one tile
TARGET_PROGRAMS = 512  # enough programs to fill an H100's 132 SMs a few times over


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _config(dim: int, dtype: torch.dtype) -> dict[str, Any]:
    """Block sizes and dot flags; under the interpreter every dot runs in float32."""
    interp = _interpreting()
    return {
        "BLOCK_N": 16 if interp else 64,
        "BLOCK_K": 32 if interp else 64,
        "BLOCK_D": max(16, triton.next_power_of_2(dim)),
        "CAST_FP32": interp,
        "IEEE": interp or dtype == torch.float32,
    }


def _splits(n_rows: int, k: int, cfg: dict[str, Any]) -> tuple[int, int]:
    """(number of K splits, prototypes per split) so that the grid has ~TARGET_PROGRAMS programs."""
    row_blocks = triton.cdiv(n_rows, cfg["BLOCK_N"])
    k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
    want = max(1, min(k_blocks, triton.cdiv(TARGET_PROGRAMS, row_blocks)))
    per_split = triton.cdiv(k_blocks, want) * cfg["BLOCK_K"]
    return triton.cdiv(k, per_split), per_split


def _row_lse(rows: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor, inv_temp: float,
             cfg: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """log-sum-exp over K of each row's tempered logits [N] (float32)."""
    n, k = rows.shape[0], protos.shape[0]
    n_splits, per_split = _splits(n, k, cfg)
    run_max = torch.empty(n_splits, n, dtype=torch.float32, device=rows.device)  # [S, N]
    run_sum = torch.empty_like(run_max)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    _row_lse_kernel[grid](rows, protos, bias, run_max, run_sum, n, k, rows.shape[1], inv_temp,
                          per_split, **cfg)  # fmt: skip
    top = run_max.amax(dim=0)  # [N]
    return top + torch.log((run_sum * torch.exp(run_max - top)).sum(dim=0))


def _check_input(dim: int, dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"impl='triton' takes float32, float16 or bfloat16 embeddings, got {dtype}; "
            "use impl='chunked' (or 'reference') for float64"
        )
    if dim > MAX_DIM:
        raise ValueError(
            f"impl='triton' holds a whole embedding row in one tile and supports D <= {MAX_DIM}, "
            f"got D={dim}; use impl='chunked' for wider embeddings"
        )


def _columns(ys, ws, bs, yt, wt, bt, lse_t, rows, pair_w, inv_ts: float, inv_tt: float,
             cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Teacher column sums [K] and the total cross term sum(Q * a) (0-dim)."""
    k = wt.shape[0]
    col_sum = torch.empty(k, dtype=torch.float32, device=wt.device)
    k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
    cross = torch.empty(k_blocks, dtype=torch.float32, device=wt.device)
    _columns_kernel[(k_blocks,)](ys, ws, bs, yt, wt, bt, lse_t, rows, pair_w, col_sum, cross,
                                 ys.shape[0], yt.shape[0], k, wt.shape[1], rows.shape[1],
                                 inv_ts, inv_tt, **cfg)  # fmt: skip
    return col_sum, cross.sum()


class _TritonLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student, student_protos, bias_s, teacher, teacher_protos, bias_t,
                targets, weights, inv_ts: float, inv_tt: float):  # fmt: skip
        cfg = _config(student.shape[1], student.dtype)
        ys, ws = student.detach().contiguous(), student_protos.detach().contiguous()
        yt, wt = teacher.detach().contiguous(), teacher_protos.detach().contiguous()
        bs, bt = bias_s.detach().float().contiguous(), bias_t.detach().float().contiguous()
        rows, pair_w = pair_table(targets, weights, torch.float32)
        lse_t = _row_lse(yt, wt, bt, inv_tt, cfg)  # [Nt]
        lse_s = _row_lse(ys, ws, bs, inv_ts, cfg)  # [Ns]
        col_sum, cross = _columns(ys, ws, bs, yt, wt, bt, lse_t, rows, pair_w, inv_ts, inv_tt, cfg)
        loss = (pair_w.sum(dim=1) * lse_s).sum() - cross
        ctx.save_for_backward(ys, ws, bs, yt, wt, bt, rows, pair_w, lse_s, lse_t)
        ctx.temps, ctx.cfg = (inv_ts, inv_tt), cfg
        mean_probs = col_sum / teacher.shape[0]
        ctx.mark_non_differentiable(mean_probs)
        return loss, mean_probs

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_probs: torch.Tensor):
        ys, ws, bs, yt, wt, bt, rows, pair_w, lse_s, lse_t = ctx.saved_tensors
        inv_ts, inv_tt = ctx.temps
        cfg = ctx.cfg
        ns, k, d, p = ys.shape[0], ws.shape[0], ws.shape[1], rows.shape[1]
        row_w = pair_w.sum(dim=1).contiguous()  # [Ns]
        args = (ys, ws, bs, yt, wt, bt, lse_s, lse_t, rows, pair_w, row_w)
        scale = grad_loss.float()
        out_y = out_w = out_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw = torch.empty(k, d, dtype=torch.float32, device=ws.device)
            db = torch.empty(k, dtype=torch.float32, device=ws.device)
            k_grid = (triton.cdiv(k, cfg["BLOCK_K"]),)
            _grad_protos_kernel[k_grid](*args, dw, db, ns, k, d, p, inv_ts, inv_tt, **cfg)
            out_w = (dw * (scale * inv_ts)).to(ws.dtype)
            out_b = db * scale
        if ctx.needs_input_grad[0]:
            n_splits, per_split = _splits(ns, k, cfg)
            dy = torch.empty(n_splits, ns, d, dtype=torch.float32, device=ys.device)
            grid = (triton.cdiv(ns, cfg["BLOCK_N"]), n_splits)
            _grad_rows_kernel[grid](*args, dy, ns, k, d, p, inv_ts, inv_tt, per_split, **cfg)
            out_y = (dy.sum(dim=0) * (scale * inv_ts)).to(ys.dtype)
        return out_y, out_w, out_b, None, None, None, None, None, None, None


def prototype_cross_entropy_triton(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (float32 scalar) and teacher_mean_probs [K] (float32) from fused Triton kernels."""
    _check_input(student.shape[1], student.dtype)
    bias_s = student_bias(student_protos, student_temp, vmf).float()  # [K], autograd via ||w_s||
    bias_t = teacher_bias(teacher_protos, center, teacher_temp, vmf).float()  # [K]
    loss, mean_probs = _TritonLoss.apply(
        student, student_protos, bias_s, teacher, teacher_protos, bias_t,
        targets, weights, 1.0 / student_temp, 1.0 / teacher_temp,
    )  # fmt: skip
    return loss, mean_probs


def teacher_statistics_triton(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp [Nt] and column mean probabilities [K] (float32) of the teacher logits."""
    _check_input(teacher.shape[1], teacher.dtype)
    with torch.no_grad():
        cfg = _config(teacher.shape[1], teacher.dtype)
        yt, wt = teacher.contiguous(), teacher_protos.contiguous()
        bt = teacher_bias(teacher_protos, center, teacher_temp, vmf).float().contiguous()
        inv_tt = 1.0 / teacher_temp
        lse_t = _row_lse(yt, wt, bt, inv_tt, cfg)
        # no student rows: the columns kernel only sums teacher probabilities
        # (one-element placeholders: a null data pointer would be refused at launch)
        empty_rows = torch.zeros(1, 1, dtype=torch.int64, device=yt.device)
        empty_w = torch.zeros(1, 1, dtype=torch.float32, device=yt.device)
        col_sum, _ = _columns(yt[:0], wt, bt, yt, wt, bt, lse_t, empty_rows, empty_w,
                              1.0, inv_tt, cfg)  # fmt: skip
    return lse_t, col_sum / teacher.shape[0]
