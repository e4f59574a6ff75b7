"""Triton kernels of the streaming prototype loss (launched from kernels/triton_loss.py).

Notation as in kernels/chunked.py: rows y [N, D], prototypes w [K, D], biases [K] (float32),
a = y_s w_s^T / tau_s + bias_s, b = y_t w_t^T / tau_t + bias_t, q = softmax_k(b),
Q[n] = sum_p pair_w[n, p] q[rows[n, p]], G = W[n] softmax_k(a[n]) - Q[n] = dL/da.

    _row_lse_kernel    grid (row blocks, K splits): running (max, sum exp) per row and split
    _columns_kernel    grid (K blocks): teacher column sums of q, and sum(Q * a) per K block
    _grad_protos_kernel grid (K blocks): dW_s block = G^T y_s, dbias_s block = sum_n G
    _grad_rows_kernel  grid (row blocks, K splits): partial dY_s = G w_s per split

Every kernel streams over the other axis, recomputing logit tiles [BLOCK_N, BLOCK_K]; nothing of
size N x K is stored. Row and prototype offsets are int64 (N*K and K*D pass 2^31). A whole row of
D (padded to BLOCK_D) is loaded at once. CAST_FP32 turns every tile to float32 before tl.dot
(needed under TRITON_INTERPRET=1, where bf16 dots are wrong); IEEE keeps float32 dots exact
instead of TF32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_rows(Y, offs_n, N, D, BLOCK_D: tl.constexpr, CAST_FP32: tl.constexpr):
    """Rows offs_n of Y [N, D] (contiguous) -> [BLOCK_N, BLOCK_D]; padding is zero."""
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    y = tl.load(Y + offs_n[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    if CAST_FP32:
        y = y.to(tl.float32)
    return y


@triton.jit
def _load_protos(W, BIAS, offs_k, K, D, BLOCK_D: tl.constexpr, CAST_FP32: tl.constexpr):
    """Prototypes offs_k of W [K, D] -> [BLOCK_K, BLOCK_D] and their float32 bias [BLOCK_K]."""
    offs_d = tl.arange(0, BLOCK_D)
    kmask = offs_k < K
    mask = kmask[:, None] & (offs_d[None, :] < D)
    w = tl.load(W + offs_k[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    if CAST_FP32:
        w = w.to(tl.float32)
    bias = tl.load(BIAS + offs_k, mask=kmask, other=0.0)
    return w, bias


@triton.jit
def _logits(y, w, bias, offs_k, K, inv_temp, IEEE: tl.constexpr):
    """Tempered logits [BLOCK_N, BLOCK_K] in float32; columns past K are -inf."""
    if IEEE:  # noqa: SIM108 (constexpr branch, resolved at compile time)
        acc = tl.dot(y, tl.trans(w), input_precision="ieee")
    else:
        acc = tl.dot(y, tl.trans(w))
    logits = acc * inv_temp + bias[None, :]
    return tl.where((offs_k < K)[None, :], logits, float("-inf"))


@triton.jit
def _target_probs(YT, WT_blk, BT_blk, LSE_T, ROWS, PAIR_W, offs_n, offs_k, NS, K, D, P,
                  inv_tt, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                  CAST_FP32: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """Q tile [BLOCK_N, BLOCK_K]: weighted teacher probabilities paired with each student row."""
    nmask = offs_n < NS
    q_acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for p in range(P):
        idx = tl.load(ROWS + offs_n * P + p, mask=nmask, other=0)  # int64 teacher row, >= 0
        pw = tl.load(PAIR_W + offs_n * P + p, mask=nmask, other=0.0)  # 0 for missing pairs
        offs_d = tl.arange(0, BLOCK_D)
        yt = tl.load(YT + idx[:, None] * D + offs_d[None, :], mask=offs_d[None, :] < D, other=0.0)
        if CAST_FP32:
            yt = yt.to(tl.float32)
        b = _logits(yt, WT_blk, BT_blk, offs_k, K, inv_tt, IEEE)
        lse = tl.load(LSE_T + idx)
        q_acc += pw[:, None] * tl.exp(b - lse[:, None])
    return q_acc


@triton.jit
def _row_lse_kernel(Y, W, BIAS, OUT_MAX, OUT_SUM, N, K, D, inv_temp, k_per_split,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                    CAST_FP32: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    pid_n = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y = _load_rows(Y, offs_n, N, D, BLOCK_D, CAST_FP32)
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w, bias = _load_protos(W, BIAS, offs_k, k_end, D, BLOCK_D, CAST_FP32)
        logits = _logits(y, w, bias, offs_k, k_end, inv_temp, IEEE)
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), axis=1
        )
        run_max = new_max
    out = pid_s * N + offs_n
    tl.store(OUT_MAX + out, run_max, mask=offs_n < N)
    tl.store(OUT_SUM + out, run_sum, mask=offs_n < N)


@triton.jit
def _columns_kernel(YS, WS, BS, YT, WT, BT, LSE_T, ROWS, PAIR_W, COL_SUM, CROSS,
                    NS, NT, K, D, P, inv_ts, inv_tt,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                    CAST_FP32: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    pid_k = tl.program_id(0).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    wt, bt = _load_protos(WT, BT, offs_k, K, D, BLOCK_D, CAST_FP32)
    col = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for r0 in range(0, NT, BLOCK_N):  # teacher column sums, every teacher row counts
        offs_n = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        yt = _load_rows(YT, offs_n, NT, D, BLOCK_D, CAST_FP32)
        b = _logits(yt, wt, bt, offs_k, K, inv_tt, IEEE)
        lse = tl.load(LSE_T + offs_n, mask=offs_n < NT, other=float("inf"))
        col += tl.sum(tl.exp(b - lse[:, None]), axis=0)
    tl.store(COL_SUM + offs_k, col, mask=kmask)
    ws, bs = _load_protos(WS, BS, offs_k, K, D, BLOCK_D, CAST_FP32)
    cross = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, NS, BLOCK_N):  # sum over this K block of Q * a
        offs_n = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        ys = _load_rows(YS, offs_n, NS, D, BLOCK_D, CAST_FP32)
        a = _logits(ys, ws, bs, offs_k, K, inv_ts, IEEE)
        q = _target_probs(YT, wt, bt, LSE_T, ROWS, PAIR_W, offs_n, offs_k, NS, K, D, P, inv_tt,
                          BLOCK_N, BLOCK_K, BLOCK_D, CAST_FP32, IEEE)  # fmt: skip
        cross += tl.sum(q * tl.where(kmask[None, :], a, 0.0), axis=1)
    tl.store(CROSS + pid_k, tl.sum(cross, axis=0))


@triton.jit
def _grad_tile(YS, WS_blk, BS_blk, YT, WT_blk, BT_blk, LSE_S, LSE_T, ROWS, PAIR_W, ROW_W,
               offs_n, offs_k, NS, K, D, P, inv_ts, inv_tt,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
               CAST_FP32: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """G = dL/da tile [BLOCK_N, BLOCK_K] (zero on padded rows and columns) and the y_s tile."""
    nmask = offs_n < NS
    ys = _load_rows(YS, offs_n, NS, D, BLOCK_D, CAST_FP32)
    a = _logits(ys, WS_blk, BS_blk, offs_k, K, inv_ts, IEEE)
    lse = tl.load(LSE_S + offs_n, mask=nmask, other=0.0)
    rw = tl.load(ROW_W + offs_n, mask=nmask, other=0.0)
    q = _target_probs(YT, WT_blk, BT_blk, LSE_T, ROWS, PAIR_W, offs_n, offs_k, NS, K, D, P,
                      inv_tt, BLOCK_N, BLOCK_K, BLOCK_D, CAST_FP32, IEEE)  # fmt: skip
    g = rw[:, None] * tl.exp(a - lse[:, None]) - q
    # padded rows: exp(a - 0) may overflow, and 0 * inf would poison the prototype gradient
    return tl.where(nmask[:, None], g, 0.0), ys


@triton.jit
def _grad_protos_kernel(YS, WS, BS, YT, WT, BT, LSE_S, LSE_T, ROWS, PAIR_W, ROW_W, DW, DB,
                        NS, K, D, P, inv_ts, inv_tt,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                        CAST_FP32: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    pid_k = tl.program_id(0).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    ws, bs = _load_protos(WS, BS, offs_k, K, D, BLOCK_D, CAST_FP32)
    wt, bt = _load_protos(WT, BT, offs_k, K, D, BLOCK_D, CAST_FP32)
    dw = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    db = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for r0 in range(0, NS, BLOCK_N):
        offs_n = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        g, ys = _grad_tile(YS, ws, bs, YT, wt, bt, LSE_S, LSE_T, ROWS, PAIR_W, ROW_W, offs_n,
                           offs_k, NS, K, D, P, inv_ts, inv_tt, BLOCK_N, BLOCK_K, BLOCK_D,
                           CAST_FP32, IEEE)  # fmt: skip
        if IEEE:
            dw += tl.dot(tl.trans(g), ys, input_precision="ieee")
        else:
            dw += tl.dot(tl.trans(g.to(ys.dtype)), ys)
        db += tl.sum(g, axis=0)
    mask = (offs_k < K)[:, None] & (offs_d[None, :] < D)
    tl.store(DW + offs_k[:, None] * D + offs_d[None, :], dw, mask=mask)
    tl.store(DB + offs_k, db, mask=offs_k < K)


@triton.jit
def _grad_rows_kernel(YS, WS, BS, YT, WT, BT, LSE_S, LSE_T, ROWS, PAIR_W, ROW_W, DY,
                      NS, K, D, P, inv_ts, inv_tt, k_per_split,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                      CAST_FP32: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    pid_n = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dy = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        ws, bs = _load_protos(WS, BS, offs_k, k_end, D, BLOCK_D, CAST_FP32)
        wt, bt = _load_protos(WT, BT, offs_k, k_end, D, BLOCK_D, CAST_FP32)
        g, ys = _grad_tile(YS, ws, bs, YT, wt, bt, LSE_S, LSE_T, ROWS, PAIR_W, ROW_W, offs_n,
                           offs_k, NS, k_end, D, P, inv_ts, inv_tt, BLOCK_N, BLOCK_K, BLOCK_D,
                           CAST_FP32, IEEE)  # fmt: skip
        if IEEE:
            dy += tl.dot(g, ws, input_precision="ieee")
        else:
            dy += tl.dot(g.to(ws.dtype), ws)
    out = (pid_s * NS + offs_n)[:, None] * D + offs_d[None, :]
    tl.store(DY + out, dy, mask=(offs_n < NS)[:, None] & (offs_d[None, :] < D))
