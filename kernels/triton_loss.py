"""Launchers, autograd.Function and public entry points of the Triton prototype loss.

Math and notation: kernels/chunked.py (the PyTorch twin, same algebra) and
kernels/triton_kernels.py. With q = softmax(b) and the pair table folded into teacher rows:

Forward:  lse_t [Nt], lse_s [Ns]              _row_lse_kernel (partials [S, N] merged here)
          V = q @ w_s [Nt, D], u = q @ bias_s,  _teacher_mix_kernel, one pass over the
          col_sum [K], q^T Z [K, D], q^T c [K]  teacher tiles
          loss = sum_n W[n] lse_s[n] - sum_{n,p} weight (<y_s[n], V[t]>/tau_s + u[t])
Backward: p = W softmax(a) = exp(a - (lse_s - log W)), one pass over the student tiles:
          dL/dy_s = (p @ w_s - sum_p weight V[t])/tau_s                    _student_grad_kernel
          dL/dw_s = (p^T y_s - q^T Z)/tau_s, dL/dbias_s = p^T 1 - q^T c   (same kernel)
Scratch memory is O(S * N * D + K * D), never O(N * K); q^T Z is the prototype gradient buffer.

Inputs may be float32, float16 or bfloat16 (accumulation in float32); half-precision embeddings
make every dot half precision (tensor cores), float32 prototypes included. Block sizes are
fixed, not autotuned: the interpreter cannot autotune, and nothing here queries the GPU at
import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
from fastproto.kernels.common import pair_table, student_bias, teacher_bias
from fastproto.kernels.triton_kernels import (
    _column_mix_kernel,
    _row_lse_kernel,
    _student_grad_kernel,
    _teacher_mix_kernel,
)
from torch import Tensor

MAX_DIM = 1024  # a whole row of D is held in one tile
TARGET_PROGRAMS = 512  # enough programs to fill an H100's 132 SMs a few times over
BACKWARD_TILE_ELEMENTS = 4096  # per [BLOCK, BLOCK_D] tile of the backward kernel
FUSED_MAX_BLOCK_D = 512  # wider rows: dY and dW/dB in two launches (see fuses_backward)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _config(dim: int, dtype: torch.dtype) -> dict[str, Any]:
    """Block sizes, launch options and dot flags for embeddings of width `dim` and `dtype`.

    Under the interpreter every dot runs in float32 on small blocks. Compiled, a program holds a
    [BLOCK_N or BLOCK_K, BLOCK_D] input tile and a float32 accumulator of that size: blocks
    shrink as D grows and for float32 inputs, and loads are not multi-buffered for float32
    (num_stages=1), so the tiles fit in an H100's 228 KiB of shared memory per SM.
    """
    if _interpreting():
        return {
            "BLOCK_N": 16,
            "BLOCK_K": 32,
            "BLOCK_D": max(16, triton.next_power_of_2(dim)),
            "CAST_FP32": True,
            "IEEE": True,
        }
    return compiled_config(dim, dtype)


def compiled_config(dim: int, dtype: torch.dtype) -> dict[str, Any]:
    """The compiled (not interpreted) branch of _config; tools/kernel_compile.py compiles every
    configuration this can return ahead of time, for sm_80 and sm_90."""
    block_d = max(16, triton.next_power_of_2(dim))
    half = dtype != torch.float32
    # From BLOCK_D = `wide` on a program gets 8 warps and the blocks halve per doubling of D.
    # float32 takes that step one doubling earlier: its IEEE dots run on the FMA units and hold
    # more registers per element, and the half-precision sizes spill there.
    wide = 256 if half else 128
    block = max(16, (64 if half else 32) // max(1, block_d // wide))
    return {
        "BLOCK_N": block,
        "BLOCK_K": block,
        "BLOCK_D": block_d,
        "CAST_FP32": False,
        "IEEE": not half,
        "num_warps": 8 if block_d >= wide else 4,
        "num_stages": 2 if half else 1,
    }


def _split(owned: int, block_own: int, split: int, block_split: int) -> tuple[int, int]:
    """A grid of (blocks of the `owned` axis, splits of the `split` axis) with ~TARGET_PROGRAMS
    programs -> (number of splits, elements per split, a multiple of block_split)."""
    own_blocks = triton.cdiv(owned, block_own)
    split_blocks = triton.cdiv(split, block_split)
    want = max(1, min(split_blocks, triton.cdiv(TARGET_PROGRAMS, own_blocks)))
    per_split = triton.cdiv(split_blocks, want) * block_split
    return triton.cdiv(split, per_split), per_split


def _splits(n_rows: int, k: int, cfg: dict[str, Any]) -> tuple[int, int]:
    """Programs own row blocks: (number of K splits, prototypes per split)."""
    return _split(n_rows, cfg["BLOCK_N"], k, cfg["BLOCK_K"])


def _row_splits(n_rows: int, k: int, cfg: dict[str, Any]) -> tuple[int, int]:
    """Programs own prototype blocks: (number of row splits, rows per split). At K = 1024 and
    BLOCK_K = 64 there are only 16 prototype blocks, too few programs for a GPU's SMs, unless the
    rows are split too."""
    return _split(k, cfg["BLOCK_K"], n_rows, cfg["BLOCK_N"])


def _row_lse(
    rows: torch.Tensor,
    protos: torch.Tensor,
    bias: torch.Tensor,
    inv_temp: float,
    cfg: dict[str, Any],
) -> torch.Tensor:
    """log-sum-exp over K of each row's tempered logits [N] (float32)."""
    return _row_lse_launch(rows, protos, bias, None, inv_temp, cfg)[0]


def _teacher_lse(
    rows: Tensor,
    protos: Tensor,
    bias: Tensor,
    raw_center: Tensor | None,
    inv_temp: float,
    cfg: dict[str, Any],
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Teacher row log-sum-exp [N] and raw = (centre [K], uncentred log-sum-exp [N]) or None.
    raw_center None: `bias` is the whole (centred) bias. A [K] tensor: `bias` is the uncentred
    bias, and one sweep makes both log-sum-exps (probability centring's statistic needs the
    uncentred one), float32."""
    if raw_center is None:
        return _row_lse(rows, protos, bias, inv_temp, cfg), None
    center = raw_center.detach().float().contiguous()
    centred, raw = _row_lse_launch(rows, protos, bias, center, inv_temp, cfg)
    assert raw is not None
    return centred, (center, raw)


def _merge_lse(run_max: torch.Tensor, run_sum: torch.Tensor) -> torch.Tensor:
    """Per-split (max, sum exp) partials [S, N] -> log-sum-exp [N]."""
    top = run_max.amax(dim=0)  # [N]
    return top + torch.log((run_sum * torch.exp(run_max - top)).sum(dim=0))


def _row_lse_launch(
    rows: Tensor,
    protos: Tensor,
    bias: Tensor,
    center: Tensor | None,
    inv_temp: float,
    cfg: dict[str, Any],
) -> tuple[Tensor, Tensor | None]:
    """Row log-sum-exps [N] (float32) of the logits of `rows` [N, D] and None or, with a centre
    [K] (`bias` then the uncentred bias), those of the centred and of the uncentred logits."""
    n, k = rows.shape[0], protos.shape[0]
    n_splits, per_split = _splits(n, k, cfg)
    parts = torch.empty(
        4 if center is not None else 2, n_splits, n, dtype=torch.float32, device=rows.device
    )  # (max, sum[, max0, sum0]) [S, N]
    raw = parts[2:] if center is not None else parts
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    # Triton wants a pointer per argument: those a False HAS_* flag leaves unused get stand-ins
    _row_lse_kernel[grid](
        rows,
        protos,
        bias,
        bias if center is None else center,
        parts[0],
        parts[1],
        raw[0],
        raw[1],
        n,
        k,
        rows.shape[1],
        inv_temp,
        per_split,
        **cfg,
        HAS_RAW=center is not None,
    )
    return _merge_lse(parts[0], parts[1]), None if center is None else _merge_lse(raw[0], raw[1])


HALF = (torch.float16, torch.bfloat16)


def _dot_dtype(embeddings: list[torch.Tensor], protos: list[torch.Tensor]) -> torch.dtype:
    """The dtype every dot takes: half-precision embeddings (autocast's head outputs) keep their
    dtype and the float32 prototypes are cast to it, as autocast casts a matmul's operands, so
    the dots run on tensor cores with float32 accumulation; otherwise the promoted dtype."""
    out = embeddings[0].dtype
    for t in embeddings[1:]:
        out = torch.promote_types(out, t.dtype)
    if out in HALF:
        return out
    for t in protos:
        out = torch.promote_types(out, t.dtype)
    return out


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


@dataclass(frozen=True)
class TeacherMix:
    """The forward's teacher side, from one pass over the teacher tiles q [Nt, K]; all float32.

    expected_protos  [Nt, D], V = q @ w_s: each teacher row's mean of the student prototypes
                     under its q, so <y_s[n], V[t]> / tau_s + u[t] is pair (n, t)'s cross term.
    expected_bias    [Nt], u = q @ bias_s.
    target_grad_w    [K, D], q^T Z: the targets' term of tau_s dL/dw_s, which the backward
                     reuses as the prototype gradient buffer; None when no Z was given (the
                     prototypes need no gradient).
    col_sum          [K], sum_n q[n, k]: the teacher column sums.
    target_grad_b    [K], q^T c: the targets' term of dL/dbias_s.
    raw_col_sum      [K], the column sums of the uncentred teacher softmax, only with a raw
                     centre (else None).
    """

    expected_protos: Tensor
    expected_bias: Tensor
    target_grad_w: Tensor | None
    col_sum: Tensor
    target_grad_b: Tensor
    raw_col_sum: Tensor | None


def _mix_launches(has_z: bool, cfg: dict[str, Any]) -> list[tuple[bool, bool]]:
    """(HAS_V, HAS_M) of each _teacher_mix_kernel launch: one, or two where fuses_backward says
    no (BLOCK_D = 1024), the [K, D] sum q^T Z in the second."""
    if not has_z:
        return [(True, False)]
    return [(True, True)] if fuses_backward(cfg) else [(True, False), (False, True)]


def _teacher_mix(
    rows: Tensor,
    protos: Tensor,
    bias: Tensor,
    shift: Tensor,
    mix: Tensor,
    mix_b: Tensor,
    z: Tensor | None,
    c: Tensor,
    raw: tuple[Tensor, Tensor] | None,
    inv_temp: float,
    cfg: dict[str, Any],
) -> TeacherMix:
    """One pass over the teacher tiles q = exp(logit - shift[n]) [Nt, K] (never held) of `rows`
    [Nt, D] -> TeacherMix with mix = w_s [K, D], mix_b = bias_s [K], z = Z [Nt, D] (or None)
    and c [Nt]. raw = (center [K], uncentred lse [Nt]) makes `bias` the uncentred bias and adds
    the uncentred column sums. `cfg`: mix_config's sizes."""
    n, (k, d), dev = rows.shape[0], protos.shape, rows.device
    n_splits, per_split = _splits(n, k, cfg)
    out = torch.empty(n_splits, n, d, dtype=torch.float32, device=dev)  # [S, N, D] partials
    out_b = torch.empty(n_splits, n, dtype=torch.float32, device=dev)  # [S, N]
    # q^T z is the prototype gradient buffer; the column sums add up across row blocks
    qz = None if z is None else torch.zeros(k, d, dtype=torch.float32, device=dev)
    col = torch.zeros(k, dtype=torch.float32, device=dev)
    qc = torch.zeros_like(col)
    col_p0 = None if raw is None else torch.zeros_like(col)
    # Triton wants a pointer per argument: those a False HAS_* flag leaves unused get stand-ins
    center, lse0 = raw if raw is not None else (col, shift)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    for has_v, has_m in _mix_launches(qz is not None, cfg):  # the raw sums ride with V
        _teacher_mix_kernel[grid](
            rows,
            protos,
            bias,
            shift,
            mix,
            mix_b,
            rows if z is None else z,
            c,
            out,
            out_b,
            col if qz is None else qz,
            col,
            qc,
            center,
            lse0,
            col if col_p0 is None else col_p0,
            n,
            k,
            d,
            inv_temp,
            per_split,
            **cfg,
            HAS_V=has_v,
            HAS_M=has_m,
            HAS_RAW=has_v and raw is not None,
        )
    return TeacherMix(out.sum(dim=0), out_b.sum(dim=0), qz, col, qc, col_p0)


def _column_sums(rows, protos, bias, shift, inv_temp: float, cfg: dict[str, Any]) -> Tensor:
    """sum_n exp(logit[n, k] - shift[n]) -> [K] float32. Programs own prototype blocks and the
    row splits' partials are added up here: no atomic adds, so the sums are deterministic."""
    (k, d), n = protos.shape, rows.shape[0]
    n_splits, per_split = _row_splits(n, k, cfg)
    out = torch.empty(n_splits, k, dtype=torch.float32, device=protos.device)  # [S, K]
    grid = (triton.cdiv(k, cfg["BLOCK_K"]), n_splits)
    _column_mix_kernel[grid](rows, protos, bias, shift, out, n, k, d, inv_temp, per_split, **cfg)
    return out.sum(dim=0)


def backward_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The backward kernel's sizes, from the forward's `cfg` (interpreted or compiled).

    _student_grad_kernel holds float32 [BLOCK, BLOCK_D] tiles beyond the forward kernels' (the
    dY accumulator, a dW tile), so BLOCK_N and BLOCK_K halve, down to 16, until a [BLOCK,
    BLOCK_D] tile has at most BACKWARD_TILE_ELEMENTS (at the forward's sizes it spills); in
    half precision at BLOCK_D = 256 and 512 BLOCK_K is then 32, with the warps of WIDE.
    """
    out = dict(cfg)
    for key in ("BLOCK_N", "BLOCK_K"):
        while out[key] > 16 and out[key] * out["BLOCK_D"] > BACKWARD_TILE_ELEMENTS:
            out[key] //= 2
    if not out["IEEE"] and out["BLOCK_N"] == out["BLOCK_K"] == 16 and out["BLOCK_D"] in WIDE:
        out["BLOCK_K"], out["num_warps"] = 32, WIDE[out["BLOCK_D"]]
    return out


# BLOCK * (BLOCK + BLOCK_D) bound of the blocks of the one-pass mixes (the teacher mix, the
# aligned sweep): they hold float32 logit tiles [BLOCK, BLOCK] beside the backward's [BLOCK,
# BLOCK_D] ones, so they take smaller blocks than the backward at the same width; float32
# (IEEE) dots hold more registers, so a lower bound
MIX_TILE_LIMIT = {"half": 6144, "float32": 4096}


def mix_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The one-pass mixes' sizes from the forward's `cfg`: backward_config's, halved down to 16
    while BLOCK * (BLOCK + BLOCK_D) exceeds MIX_TILE_LIMIT."""
    out = backward_config(cfg)
    limit = MIX_TILE_LIMIT["float32" if out["IEEE"] else "half"]
    while out["BLOCK_N"] > 16 and out["BLOCK_N"] * (out["BLOCK_N"] + out["BLOCK_D"]) > limit:
        out["BLOCK_N"] //= 2
        out["BLOCK_K"] //= 2
    return out


# Half-precision backward at BLOCK_D = 256 and 512: the warps of its 16 x 32 blocks. Triton lays
# a 16 x 16 logit tile under 8 warps over 16 x 64, so its dots would run 4x replicated; 32
# prototypes under 4 warps cover each tile once, and at 512, where 4 warps spill, 8 warps cover
# it twice. tools/kernel_compile.py reports the replication ("redundant x").
WIDE = {256: 4, 512: 8}


def fuses_backward(cfg: dict[str, Any]) -> bool:
    """Whether one launch makes dY and dW together. Beyond FUSED_MAX_BLOCK_D the blocks are
    already 16 and the fused program spills, so there dY and dW/dB are two launches of the same
    kernel (two passes over the student tiles)."""
    return cfg["BLOCK_D"] <= FUSED_MAX_BLOCK_D


def _student_grads(
    ys: Tensor,
    ws: Tensor,
    bs: Tensor,
    shift: Tensor,
    inv_ts: float,
    cfg: dict[str, Any],
    need_y: bool,
    dw: Tensor | None,
    db: Tensor | None,
) -> Tensor | None:
    """One pass over the student logit tiles with p = exp(logit - shift[n]) [Ns, K] (never held):
    -> p @ w_s [Ns, D] float32 (need_y, else None); adds p^T y_s into dw [K, D] and p^T 1 into
    db [K] in place (both float32, both given or both None). `cfg`: backward_config's sizes.
    """
    has_dw = dw is not None and db is not None
    if need_y and has_dw and not fuses_backward(cfg):
        _launch_student_grad(ys, ws, bs, shift, inv_ts, cfg, False, dw, db)
        return _launch_student_grad(ys, ws, bs, shift, inv_ts, cfg, True, None, None)
    if not (need_y or has_dw):
        return None
    return _launch_student_grad(ys, ws, bs, shift, inv_ts, cfg, need_y, dw, db)


def _launch_student_grad(
    ys: Tensor,
    ws: Tensor,
    bs: Tensor,
    shift: Tensor,
    inv_ts: float,
    cfg: dict[str, Any],
    need_y: bool,
    dw: Tensor | None,
    db: Tensor | None,
) -> Tensor | None:
    """One _student_grad_kernel launch; arguments and result as in _student_grads."""
    n, k, d = ys.shape[0], ws.shape[0], ws.shape[1]
    n_splits, per_split = _splits(n, k, cfg)
    # dY: one partial per K split [S, N, D], summed below; dW, dB: atomic adds across row blocks
    dy = torch.empty(n_splits, n, d, dtype=torch.float32, device=ys.device) if need_y else None
    has_dw = dw is not None and db is not None
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    # Triton wants a pointer per argument: those a False HAS_* flag leaves unused get stand-ins
    _student_grad_kernel[grid](
        ys,
        ws,
        bs,
        shift,
        shift if dy is None else dy,
        dw if has_dw else shift,
        db if has_dw else shift,
        n,
        k,
        d,
        inv_ts,
        per_split,
        **cfg,
        HAS_DY=need_y,
        HAS_DW=has_dw,
    )
    return None if dy is None else dy.sum(dim=0)


def _scatter_pairs(
    values: torch.Tensor, rows: torch.Tensor, pair_w: torch.Tensor, n_teacher: int
) -> torch.Tensor:
    """sum over pairs (n, p) with t[n, p] = m of weight * values[n] -> [Nt, ...] float32."""
    out = torch.zeros((n_teacher, *values.shape[1:]), dtype=torch.float32, device=values.device)
    for p in range(rows.shape[1]):
        w = pair_w[:, p].reshape(-1, *([1] * (values.dim() - 1)))
        out.index_add_(0, rows[:, p], values.float() * w)
    return out


def _gather_pairs(values: torch.Tensor, rows: torch.Tensor, pair_w: torch.Tensor) -> torch.Tensor:
    """sum_p weight[n, p] * values[t[n, p]] -> [Ns, ...]."""
    out = values.new_zeros((rows.shape[0], *values.shape[1:]))
    for p in range(rows.shape[1]):
        w = pair_w[:, p].reshape(-1, *([1] * (values.dim() - 1)))
        out += values.index_select(0, rows[:, p]) * w
    return out


def _prototype_grad_buffers(
    ws: torch.Tensor, qz: torch.Tensor | None, qc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (dW [K, D], dB [K]) buffers holding the teacher terms (-q^T Z, -q^T c), to which
    the backward kernel adds the student terms. qz is the forward's buffer, reused in place; it
    is None when the forward skipped it (only the bias needs a gradient, which the public entry
    point never asks: the bias comes from the prototypes) and a zero buffer stands in."""
    if qz is None:
        return torch.zeros(ws.shape, dtype=torch.float32, device=ws.device), qc.neg()
    return qz.neg_(), qc.neg()


class _TritonLoss(torch.autograd.Function):
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
        targets,
        weights,
        inv_ts: float,
        inv_tt: float,
    ):
        # raw_center None: bias_t is the centred bias. A [K] tensor: bias_t is the uncentred
        # one, and the uncentred mean probabilities come back too (else an empty tensor).
        # one dtype for every dot: bfloat16 embeddings under autocast make bfloat16 dots of
        # the float32 prototypes; dW still accumulates in float32 and returns as float32
        dt = _dot_dtype([student, teacher], [student_protos, teacher_protos])
        cfg = _config(student.shape[1], dt)
        ys, ws = student.detach().to(dt).contiguous(), student_protos.detach().to(dt).contiguous()
        yt, wt = teacher.detach().to(dt).contiguous(), teacher_protos.detach().to(dt).contiguous()
        ctx.dtypes = (student.dtype, student_protos.dtype)
        bs, bt = bias_s.detach().float().contiguous(), bias_t.detach().float().contiguous()
        rows, pair_w = pair_table(targets, weights, torch.float32)
        nt = yt.shape[0]
        lse_t, raw = _teacher_lse(yt, wt, bt, raw_center, inv_tt, cfg)  # [Nt], raw or None
        row_w = pair_w.sum(dim=1)  # [Ns]
        lse_s = _row_lse(ys, ws, bs, inv_ts, cfg)  # [Ns]
        z = _scatter_pairs(ys, rows, pair_w, nt).to(ys.dtype) if ctx.needs_input_grad[1] else None
        c = _scatter_pairs(torch.ones_like(lse_s), rows, pair_w, nt)  # [Nt]
        mix = _teacher_mix(yt, wt, bt, lse_t, ws, bs, z, c, raw, inv_tt, mix_config(cfg))
        v = mix.expected_protos  # [Nt, D]
        cross = (ys.float() * _gather_pairs(v, rows, pair_w)).sum() * inv_ts
        loss = (row_w * lse_s).sum() - cross - (pair_w * mix.expected_bias[rows]).sum()
        ctx.save_for_backward(
            ys, ws, bs, rows, pair_w, lse_s, v, mix.target_grad_w, mix.target_grad_b
        )
        ctx.inv_ts, ctx.cfg = inv_ts, cfg
        mean_probs = mix.col_sum / nt
        raw_sum = mix.raw_col_sum  # [K] or None
        raw_means = mix.col_sum.new_empty(0) if raw_sum is None else raw_sum / nt
        ctx.mark_non_differentiable(mean_probs, raw_means)
        return loss, mean_probs, raw_means

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_probs: Tensor, _grad_raw: Tensor):
        ys, ws, bs, rows, pair_w, lse_s, v, qz, qc = ctx.saved_tensors
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        inv_ts, scale = ctx.inv_ts, grad_loss.float()
        # W[n] softmax(a[n]) = exp(a[n] - shift[n]); rows with W = 0 get shift = inf, p = 0
        shift = (lse_s - torch.log(pair_w.sum(dim=1))).contiguous()  # [Ns]
        dw, db = _prototype_grad_buffers(ws, qz, qc) if need_w or need_b else (None, None)
        dy = _student_grads(
            ys, ws, bs, shift, inv_ts, backward_config(ctx.cfg), need_y, dw, db
        )  # [Ns, D] or None; dW, dB in place
        out_y = out_w = out_b = None
        if dy is not None:
            dy -= _gather_pairs(v, rows, pair_w)
            out_y = dy.mul_(scale * inv_ts).to(ctx.dtypes[0])
        if need_w and dw is not None:
            out_w = dw.mul_(scale * inv_ts).to(ctx.dtypes[1])
        if need_b and db is not None:
            out_b = db.mul_(scale)
        return out_y, out_w, out_b, None, None, None, None, None, None, None, None


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
    raw_means: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Loss (float32 scalar), teacher_mean_probs [K] and, with raw_means, the mean of the
    uncentred teacher softmax [K] (probability centring's batch statistic; else None), all
    float32, from fused Triton kernels."""
    _check_input(student.shape[1], _dot_dtype([student, teacher], [student_protos, teacher_protos]))
    bias_s = student_bias(student_protos, student_temp, vmf).float()  # [K], autograd via ||w_s||
    # with raw_means the kernels take the uncentred bias and subtract the centre themselves
    bias_t = teacher_bias(
        teacher_protos, torch.zeros_like(center) if raw_means else center, teacher_temp, vmf
    ).float()
    loss, mean_probs, raw = _TritonLoss.apply(
        student,
        student_protos,
        bias_s,
        teacher,
        teacher_protos,
        bias_t,
        center if raw_means else None,
        targets,
        weights,
        1.0 / student_temp,
        1.0 / teacher_temp,
    )
    return loss, mean_probs, raw if raw_means else None


def teacher_statistics_triton(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp [Nt] and column mean probabilities [K] (float32) of the teacher logits."""
    _check_input(teacher.shape[1], _dot_dtype([teacher], [teacher_protos]))
    with torch.no_grad():
        dt = _dot_dtype([teacher], [teacher_protos])
        cfg = _config(teacher.shape[1], dt)
        yt, wt = teacher.to(dt).contiguous(), teacher_protos.to(dt).contiguous()
        bt = teacher_bias(teacher_protos, center, teacher_temp, vmf).float().contiguous()
        inv_tt = 1.0 / teacher_temp
        lse_t = _row_lse(yt, wt, bt, inv_tt, cfg)
        col_sum = _column_sums(yt, wt, bt, lse_t, inv_tt, cfg)
    return lse_t, col_sum / teacher.shape[0]
