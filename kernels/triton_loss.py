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
A/B forms (BLOCK_OVERRIDES below): dW from programs that own prototype blocks
(_column_mix_kernel HAS_DW, no atomic adds), and with it p @ w_s made in the student log-sum-exp
sweep (_row_flash_kernel), so that the backward has no row sweep.

Inputs may be float32, float16 or bfloat16 (accumulation in float32); half-precision embeddings
make every dot half precision (tensor cores), float32 prototypes included. Block sizes are
fixed, not autotuned: the interpreter cannot autotune, and nothing here queries the GPU at
import time.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
from fastproto.kernels.common import pair_table, student_bias, teacher_bias
from fastproto.kernels.triton_kernels import (
    _column_mix_kernel,
    _row_flash_kernel,
    _row_lse_kernel,
    _student_grad_kernel,
    _teacher_mix_kernel,
)
from torch import Tensor

MAX_DIM = 1024  # a whole row of D is held in one tile
TARGET_PROGRAMS = 512  # enough programs to fill an H100's 132 SMs a few times over
BACKWARD_TILE_ELEMENTS = 4096  # per [BLOCK, BLOCK_D] tile of the backward kernel
FUSED_MAX_BLOCK_D = 512  # wider rows: dY and dW/dB in two launches


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
        return {"BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_D": max(16, triton.next_power_of_2(dim)),
                "CAST_FP32": True, "IEEE": True}  # fmt: skip
    return compiled_config(dim, dtype)


def compiled_config(dim: int, dtype: torch.dtype) -> dict[str, Any]:
    """The compiled (not interpreted) branch of _config; bench/kernel_compile.py compiles every
    configuration this can return ahead of time, for sm_80 and sm_90."""
    block_d = max(16, triton.next_power_of_2(dim))
    half = dtype != torch.float32
    # From BLOCK_D = `wide` on a program gets 8 warps and the blocks halve per doubling of D.
    # float32 (IEEE dots on the FMA units) needs that one step earlier: with the half-precision
    # sizes ptxas spilled 400-800 bytes per thread at BLOCK_D = 128 and 256 (sm_80 and sm_90,
    # bench/results/kernel_compile_table.md); these sizes spill nothing.
    wide = 256 if half else 128
    block = max(16, (64 if half else 32) // max(1, block_d // wide))
    return {"BLOCK_N": block, "BLOCK_K": block, "BLOCK_D": block_d, "CAST_FP32": False,
            "IEEE": not half, "num_warps": 8 if block_d >= wide else 4,
            "num_stages": 2 if half else 1}  # fmt: skip


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


def _row_lse(rows: torch.Tensor, protos: torch.Tensor, bias: torch.Tensor, inv_temp: float,
             cfg: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """log-sum-exp over K of each row's tempered logits [N] (float32)."""
    return _row_lse_launch(rows, protos, bias, None, inv_temp, cfg)[0]


def _teacher_lse(rows: Tensor, protos: Tensor, bias: Tensor, raw_center: Tensor | None,
                 inv_temp: float,
                 cfg: dict[str, Any]) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:  # fmt: skip
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


def _row_lse_launch(rows, protos, bias, center, inv_temp: float,
                    cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    n, k = rows.shape[0], protos.shape[0]
    n_splits, per_split = _splits(n, k, cfg)
    parts = torch.empty(4 if center is not None else 2, n_splits, n, dtype=torch.float32,
                        device=rows.device)  # fmt: skip  # (max, sum[, max0, sum0]) [S, N]
    raw = parts[2:] if center is not None else parts
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    _row_lse_kernel[grid](rows, protos, bias, bias if center is None else center, parts[0],
                          parts[1], raw[0], raw[1], n, k, rows.shape[1], inv_temp, per_split,
                          **cfg, HAS_RAW=center is not None)  # fmt: skip
    return _merge_lse(parts[0], parts[1]), None if center is None else _merge_lse(raw[0], raw[1])


RowFlash = tuple[Tensor, Tensor | None, Tensor, Tensor]


def _row_flash(rows, protos, bias, center: Tensor | None, mix: Tensor | None,
               mix_b: Tensor | None, inv_temp: float, cfg: dict[str, Any]) -> RowFlash:  # fmt: skip
    """One _row_flash_kernel sweep -> (log-sum-exp [N], the uncentred one [N] with a centre
    [K] (`bias` then uncentred) else None, softmax @ mix [N, D], softmax @ mix_b [N]), float32;
    mix None: the row's own prototypes and bias. The split partials, each against its own
    running max, are rescaled to the common max and added up here."""
    (n, d), k = rows.shape, protos.shape[0]
    n_splits, per_split = _splits(n, k, cfg)
    parts = torch.empty(5 if center is not None else 3, n_splits, n, dtype=torch.float32,
                        device=rows.device)  # fmt: skip  # (max, sum, u[, max0, sum0]) [S, N]
    v = torch.empty(n_splits, n, d, dtype=torch.float32, device=rows.device)  # [S, N, D]
    raw = parts[3:] if center is not None else parts
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    _row_flash_kernel[grid](rows, protos, bias, bias if center is None else center,
                            protos if mix is None else mix, bias if mix_b is None else mix_b,
                            parts[0], parts[1], raw[0], raw[1], v, parts[2], n, k, d, inv_temp,
                            per_split, **cfg, HAS_RAW=center is not None,
                            SELF_MIX=mix is None)  # fmt: skip
    lse = _merge_lse(parts[0], parts[1])  # [N]
    share = torch.exp(parts[0] - lse)  # [S, N]: each split's weight in the softmax
    mixed = v[0] * share[0, :, None] if n_splits == 1 else (v * share[..., None]).sum(dim=0)
    lse0 = None if center is None else _merge_lse(raw[0], raw[1])
    return lse, lse0, mixed, (parts[2] * share).sum(dim=0)


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


TeacherMix = tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor | None]


def _teacher_mix(rows, protos, bias, shift, mix, mix_b, z, c, raw: tuple[Tensor, Tensor] | None,
                 inv_temp: float, cfg: dict[str, Any]) -> TeacherMix:  # fmt: skip
    """One pass over the teacher tiles q = exp(logit - shift[n]) [Nt, K] (never held) -> V = q @
    mix [Nt, D], u = q @ mix_b [Nt], q^T z [K, D] (None when z is None), column sums [K],
    q^T c [K] and, with raw = (center [K], uncentred lse [N]), bias being the uncentred bias,
    the uncentred column sums [K] (else None); all float32. `cfg`: mix_config's sizes. Two
    passes where fuses_backward says no (BLOCK_D = 1024), the [K, D] sum in the second."""
    n, (k, d), dev = rows.shape[0], protos.shape, rows.device
    n_splits, per_split = _splits(n, k, cfg)
    out = torch.empty(n_splits, n, d, dtype=torch.float32, device=dev)  # [S, N, D] partials
    out_b = torch.empty(n_splits, n, dtype=torch.float32, device=dev)  # [S, N]
    # q^T z is the prototype gradient buffer; the column sums add up across row blocks
    qz = None if z is None else torch.zeros(k, d, dtype=torch.float32, device=dev)
    col = torch.zeros(k, dtype=torch.float32, device=dev)
    qc = torch.zeros_like(col)
    col_p0 = None if raw is None else torch.zeros_like(col)
    center, lse0 = raw if raw is not None else (col, shift)  # unread stand-ins without raw
    if qz is None:
        launches = [(True, False)]
    else:
        launches = [(True, True)] if fuses_backward(cfg) else [(True, False), (False, True)]
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    for has_v, has_m in launches:  # the uncentred column sums ride with V (the first)
        _teacher_mix_kernel[grid](rows, protos, bias, shift, mix, mix_b, rows if z is None else z,
                                  c, out, out_b, col if qz is None else qz, col, qc, center, lse0,
                                  col if col_p0 is None else col_p0, n, k, d, inv_temp,
                                  per_split, **cfg, HAS_V=has_v, HAS_M=has_m,
                                  HAS_RAW=has_v and raw is not None)  # fmt: skip
    return out.sum(dim=0), out_b.sum(dim=0), qz, col, qc, col_p0


def _column_sums(rows, protos, bias, shift, inv_temp: float, cfg: dict[str, Any]) -> Tensor:
    """sum_n exp(logit[n, k] - shift[n]) -> [K] float32, deterministic (per-split partials)."""
    return _column_mix(rows, protos, bias, shift, inv_temp, cfg, False)[0]


def _column_mix(rows, protos, bias, shift, inv_temp: float, cfg: dict[str, Any],
                has_dw: bool) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """With p = exp(logit[n, k] - shift[n]): sum_n p [K] and, with has_dw, sum_n p rows[n] [K, D]
    (else None), float32. Programs own prototype blocks and the row splits' partials are added
    up here: no atomic adds, so both are deterministic."""
    (k, d), n, dev = protos.shape, rows.shape[0], protos.device
    n_splits, per_split = _row_splits(n, k, cfg)
    out = torch.empty(n_splits, k, dtype=torch.float32, device=dev)  # [S, K]
    out_w = torch.empty(n_splits, k, d, dtype=torch.float32, device=dev) if has_dw else out
    grid = (triton.cdiv(k, cfg["BLOCK_K"]), n_splits)
    _column_mix_kernel[grid](rows, protos, bias, shift, out, out_w, n, k, d, inv_temp, per_split,
                             **cfg, HAS_DW=has_dw)  # fmt: skip
    if not has_dw:
        return out.sum(dim=0), None
    return out.sum(dim=0), out_w[0] if n_splits == 1 else out_w.sum(dim=0)  # no [K, D] copy


def backward_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The backward kernel's sizes, from the forward's `cfg` (interpreted or compiled).

    _student_grad_kernel holds float32 [BLOCK, BLOCK_D] tiles beyond the forward kernels' (the
    dY accumulator, a dW tile), so BLOCK_N and BLOCK_K halve, down to 16, until a [BLOCK,
    BLOCK_D] tile has at most BACKWARD_TILE_ELEMENTS; in half precision at BLOCK_D = 256 and
    512 BLOCK_K is then 32, with the warps of WIDE. With the forward's half-precision sizes
    ptxas spilled 216 B per thread at BLOCK_D = 256 on sm_90 and 696 B at BLOCK_D = 128 on sm_80
    (dW alone); bench/results/kernel_compile_table.md has the figures of the sizes used.
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
# BLOCK_D] ones, and at BLOCK_D = 64 the backward's 64 x 64 blocks spilled 140-412 B per thread
# on sm_80 (half inputs) in both; float32 (IEEE) dots hold more, and the teacher mix with the
# uncentred column sums spilled 192-280 B at 32 x 128 on sm_90 under the half-precision bound
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


# Half-precision backward at BLOCK_D = 256 and 512: (warps) with 32 prototypes per block. With
# 16 x 16 blocks and 8 warps Triton laid each 16 x 16 logit tile over warps that cover 16 x 64,
# so the two logit dots ran 4x replicated (`redundant x` in bench/results/
# kernel_compile_table.md, from bench/mma_layouts.py). 16 x 32 under 4 warps covers each tile
# once at BLOCK_D = 256 (4 warps spilled 260-460 B at 512, so 8 there: 2x), with no spill beyond
# 16 B on sm_80 or sm_90. Not yet timed on a GPU.
WIDE = {256: 4, 512: 8}


# Blocks (BLOCK_N, BLOCK_K, warps) by BLOCK_D that replace one gradient kernel's sizes from the
# functions above, {kernel name: {BLOCK_D: blocks}}, for A/B runs of other blocks: the variants
# of bench/prototype_loss.py set it for a run, and bench/kernel_compile.py compiles what they
# set. Empty, as here: every launch takes the sizes above. Compiled float32 keeps its sizes.
# "_column_mix_kernel" blocks change the CLS backward's algorithm where they apply: dW and dB
# come from programs that own prototype blocks (no atomic adds; one more student logit tile).
# "_aligned_column_kernel" blocks do the same for the aligned rows (kernels/triton_aligned.py):
# the sweep makes dY alone and a second sweep dW and dB (one more student and teacher tile).
BLOCK_OVERRIDES: dict[str, dict[int, tuple[int, int, int]]] = {}


def _override(kernel: str, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """`cfg` with BLOCK_OVERRIDES' blocks for `kernel` at cfg's BLOCK_D, or None where it has
    none; half-precision and interpreted configurations only (compiled float32 dots hold more
    registers)."""
    blocks = BLOCK_OVERRIDES.get(kernel, {}).get(cfg["BLOCK_D"])
    if blocks is None or (cfg["IEEE"] and not cfg["CAST_FP32"]):
        return None
    return {**cfg, "BLOCK_N": blocks[0], "BLOCK_K": blocks[1], "num_warps": blocks[2]}


def override_blocks(kernel: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with BLOCK_OVERRIDES' blocks for `kernel` (a kernel's name in
    kernels/triton_kernels.py) where it has any, else `cfg`."""
    return _override(kernel, cfg) or cfg


def column_dw_config(cfg: dict[str, Any],
                     kernel: str = "_column_mix_kernel") -> dict[str, Any] | None:  # fmt: skip
    """From the forward's `cfg`: the sizes of a dW sweep owned by prototype blocks (`kernel`:
    `_column_mix_kernel HAS_DW` for the pair table, `_aligned_column_kernel` for aligned rows)
    where BLOCK_OVERRIDES asks for one, else None (the fused sweep, whose row blocks add dW
    atomically)."""
    return _override(kernel, cfg)


def flash_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """From the forward's `cfg`: the sizes of row log-sum-exp sweeps that also make each row's
    softmax @ w_s (`_row_flash_kernel`) where BLOCK_OVERRIDES asks for them, else None."""
    return _override("_row_flash_kernel", cfg)


def fuses_backward(cfg: dict[str, Any]) -> bool:
    """Whether one launch makes dY and dW together. Beyond FUSED_MAX_BLOCK_D the blocks are
    already 16 and the fused program spilled 250-270 B per thread on sm_80, so there dY and
    dW/dB are two launches of the same kernel (two passes over the student tiles)."""
    return cfg["BLOCK_D"] <= FUSED_MAX_BLOCK_D


def _student_grads(ys, ws, bs, shift, inv_ts: float, cfg: dict[str, Any], need_y: bool,
                   dw: Tensor | None, db: Tensor | None) -> Tensor | None:  # fmt: skip
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


def _launch_student_grad(ys, ws, bs, shift, inv_ts: float, cfg: dict[str, Any], need_y: bool,
                         dw: Tensor | None, db: Tensor | None) -> Tensor | None:  # fmt: skip
    """One _student_grad_kernel launch; arguments and result as in _student_grads."""
    n, k, d = ys.shape[0], ws.shape[0], ws.shape[1]
    n_splits, per_split = _splits(n, k, cfg)
    # dY: one partial per K split [S, N, D], summed below; dW, dB: atomic adds across row blocks
    dy = torch.empty(n_splits, n, d, dtype=torch.float32, device=ys.device) if need_y else None
    has_dw = dw is not None and db is not None
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), n_splits)
    _student_grad_kernel[grid](ys, ws, bs, shift, shift if dy is None else dy,
                               dw if has_dw else shift, db if has_dw else shift, n, k, d, inv_ts,
                               per_split, **cfg, HAS_DY=need_y, HAS_DW=has_dw)  # fmt: skip
    return None if dy is None else dy.sum(dim=0)


def _student_side(ys, ws, bs, shift, inv_ts: float, cfg: dict[str, Any], need_y: bool,
                  dw: Tensor | None, db: Tensor | None,
                  mixed: Tensor | None = None) -> Tensor | None:  # fmt: skip
    """The backward's student terms, as _student_grads (arguments alike; `cfg` the forward's
    sizes): one fused sweep, or where column_dw_config applies, dY from the row sweep and dW, dB
    from a sweep owned by prototype blocks. mixed: W softmax(a) @ w_s [Ns, D] from the forward's
    flash sweep (_flash_student), which is then dY, with no row sweep."""
    row_cfg = override_blocks("_student_grad_kernel", backward_config(cfg))
    col_cfg = column_dw_config(cfg) if dw is not None and db is not None else None
    if col_cfg is None:
        assert mixed is None  # the forward makes it only where the column sweep runs
        return _student_grads(ys, ws, bs, shift, inv_ts, row_cfg, need_y, dw, db)
    col_b, col_w = _column_mix(ys, ws, bs, shift, inv_ts, col_cfg, True)
    assert dw is not None and db is not None and col_w is not None
    dw += col_w  # [K, D]
    db += col_b
    if mixed is not None:
        return mixed if need_y else None
    return _student_grads(ys, ws, bs, shift, inv_ts, row_cfg, need_y, None, None)


def _flash_student(ys, ws, bs, row_w: Tensor, inv_ts: float, cfg: dict[str, Any],
                   grads: bool) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """The student rows' log-sum-exp [Ns] and, where the `triton-flash` A/B asks for it (flash
    and column-owned dW blocks in BLOCK_OVERRIDES) and `grads` (dY and dW both wanted), W
    softmax(a) @ w_s [Ns, D] from the same sweep (else None): the backward's dY with no
    further student tile, dW from the column sweep (4 passes on student rows, no atomic adds)."""
    flash_cfg = flash_config(cfg) if grads and column_dw_config(cfg) is not None else None
    if flash_cfg is None:
        return _row_lse(ys, ws, bs, inv_ts, cfg), None
    lse_s, _, mixed, _ = _row_flash(ys, ws, bs, None, None, None, inv_ts, flash_cfg)
    return lse_s, mixed.mul_(row_w[:, None])


def _scatter_pairs(values: torch.Tensor, rows: torch.Tensor, pair_w: torch.Tensor,
                   n_teacher: int) -> torch.Tensor:  # fmt: skip
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


def _prototype_grad_buffers(ws: torch.Tensor, qz: torch.Tensor | None,
                            qc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """float32 (dW [K, D], dB [K]) buffers holding the teacher terms (-q^T Z, -q^T c), to which
    the backward kernel adds the student terms. qz is the forward's buffer, reused in place; it
    is None when the forward skipped it (only the bias needs a gradient, which the public entry
    point never asks: the bias comes from the prototypes) and a zero buffer stands in."""
    if qz is None:
        return torch.zeros(ws.shape, dtype=torch.float32, device=ws.device), qc.neg()
    return qz.neg_(), qc.neg()


class _TritonLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student, student_protos, bias_s, teacher, teacher_protos, bias_t,
                raw_center, targets, weights, inv_ts: float, inv_tt: float):  # fmt: skip
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
        grads = ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
        row_w = pair_w.sum(dim=1)  # [Ns]
        lse_s, mixed = _flash_student(ys, ws, bs, row_w, inv_ts, cfg, grads)  # [Ns], [Ns, D]
        z = _scatter_pairs(ys, rows, pair_w, nt).to(ys.dtype) if ctx.needs_input_grad[1] else None
        c = _scatter_pairs(torch.ones_like(lse_s), rows, pair_w, nt)  # [Nt]
        # [Nt, D], [Nt], [K, D] or None, [K], [K], [K] or None: the teacher side in one pass
        v, u, qz, col_sum, qc, col_p0 = _teacher_mix(yt, wt, bt, lse_t, ws, bs, z, c, raw, inv_tt,
                                                     mix_config(cfg))  # fmt: skip
        cross = (ys.float() * _gather_pairs(v, rows, pair_w)).sum() * inv_ts
        loss = (row_w * lse_s).sum() - cross - (pair_w * u[rows]).sum()
        ctx.save_for_backward(ys, ws, bs, rows, pair_w, lse_s, v, qz, qc, mixed)
        ctx.inv_ts, ctx.cfg = inv_ts, cfg
        mean_probs = col_sum / nt
        raw_means = col_sum.new_empty(0) if col_p0 is None else col_p0 / nt
        ctx.mark_non_differentiable(mean_probs, raw_means)
        return loss, mean_probs, raw_means

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_probs: Tensor, _grad_raw: Tensor):
        ys, ws, bs, rows, pair_w, lse_s, v, qz, qc, mixed = ctx.saved_tensors
        need_y, need_w, need_b = ctx.needs_input_grad[:3]
        inv_ts, scale = ctx.inv_ts, grad_loss.float()
        # W[n] softmax(a[n]) = exp(a[n] - shift[n]); rows with W = 0 get shift = inf, p = 0
        shift = (lse_s - torch.log(pair_w.sum(dim=1))).contiguous()  # [Ns]
        dw, db = _prototype_grad_buffers(ws, qz, qc) if need_w or need_b else (None, None)
        dy = _student_side(ys, ws, bs, shift, inv_ts, ctx.cfg, need_y, dw, db, mixed)  # [Ns, D]
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
    bias_t = teacher_bias(teacher_protos, torch.zeros_like(center) if raw_means else center,
                          teacher_temp, vmf).float()  # fmt: skip
    loss, mean_probs, raw = _TritonLoss.apply(
        student, student_protos, bias_s, teacher, teacher_protos, bias_t,
        center if raw_means else None, targets, weights, 1.0 / student_temp, 1.0 / teacher_temp,
    )  # fmt: skip
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
