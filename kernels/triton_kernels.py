"""Triton kernels of the streaming prototype loss (launched from kernels/triton_loss.py).

Notation as in kernels/chunked.py. Every kernel recomputes tempered logit tiles
l = y w^T * inv_temp + bias [BLOCK_N, BLOCK_K] and weights them as p = exp(l - shift[n]), with a
per-row shift (a row log-sum-exp, possibly minus log of a row weight); nothing N x K is stored.

    _row_lse_kernel     grid (row blocks, K splits): running (max, sum exp) per row and split
    _column_mix_kernel  grid (K blocks, row splits): out[k] = sum_n p[n, k]  [S, K]
                        (teacher column sums for centring's statistics; partials per split)
    _teacher_mix_kernel grid (row blocks, K splits), the forward's teacher side in one pass:
                        V[s, n] = sum_k p[n, k] w_s[k]  [S, N, D], u[s, n] = sum_k p bias_s
                        [S, N], and by float32 atomic adds q^T Z [K, D], column sums [K], q^T c
                        [K]
    _student_grad_kernel  grid (row blocks, K splits), the whole backward in one pass over the
                        student tiles: DY[s, n] = sum_k p[n, k] w_s[k]  [S, N, D], and
                        DW[k] += sum_n p[n, k] y_s[n]  [K, D], DB[k] += sum_n p[n, k]  [K]
                        by float32 atomic adds (dL/dy_s, dL/dw_s, dL/dbias_s before scaling)
    _aligned_grad_kernel  grid (row blocks, K splits), student row n against teacher row n:
                        the student and teacher tiles once each, g = W (p - q), and from g the
                        same DY partials and DW, DB atomics, plus the per-row cross term
                        sum_k q a [S, N] and the teacher column sums [K] (the whole loss and
                        its gradients in one sweep after the two row log-sum-exps)

Row and prototype offsets are int64 (N*K and K*D pass 2^31). A whole row of D (padded to
BLOCK_D) is loaded at once. CAST_FP32 turns every tile to float32 before tl.dot (needed under
TRITON_INTERPRET=1, where bf16 dots are wrong); IEEE keeps float32 dots exact instead of TF32.
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
def _lse_update(run_max, run_sum, logits):
    """Online log-sum-exp: (running max, running sum of exp(l - max)) [BLOCK_N] after a tile."""
    new_max = tl.maximum(run_max, tl.max(logits, axis=1))
    new_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), 1)
    return new_max, new_sum


@triton.jit
def _row_sweep_start(
    Y, N, D, k_per_split, K, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAST_FP32: tl.constexpr
):
    """A row sweep's program: its row offsets [BLOCK_N], rows [BLOCK_N, BLOCK_D], the first
    row of its split's partials (pid_s * N) and its split's K range [k_start, k_end)."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y = _load_rows(Y, offs_n, N, D, BLOCK_D, CAST_FP32)
    k_start = pid_s * k_per_split
    return offs_n, y, pid_s * N, k_start, tl.minimum(k_start + k_per_split, K)


@triton.jit
def _lse_start(BLOCK_N: tl.constexpr):
    """Empty running (max, sum) pairs [BLOCK_N], centred and uncentred."""
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    return run_max, run_sum, run_max, run_sum


@triton.jit
def _centred_tile(
    y,
    W,
    BIAS,
    CENTER,
    k0,
    k_end,
    D,
    inv_temp,
    run_max0,
    run_sum0,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_RAW: tl.constexpr,
):
    """K block k0's logits [BLOCK_N, BLOCK_K]; HAS_RAW: the uncentred log-sum-exp's running pair
    after the tile, and the logits minus the centre CENTER [K]. -> (logits, run_max0,
    run_sum0)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w, bias = _load_protos(W, BIAS, offs_k, k_end, D, BLOCK_D, CAST_FP32)
    logits = _logits(y, w, bias, offs_k, k_end, inv_temp, IEEE)
    if HAS_RAW:
        run_max0, run_sum0 = _lse_update(run_max0, run_sum0, logits)
        center = tl.load(CENTER + offs_k, mask=offs_k < k_end, other=0.0)
        logits = logits - center[None, :]
    return logits, run_max0, run_sum0


@triton.jit
def _store_lse(
    OUT_MAX,
    OUT_SUM,
    OUT_MAX0,
    OUT_SUM0,
    out,
    rows,
    run_max,
    run_sum,
    run_max0,
    run_sum0,
    HAS_RAW: tl.constexpr,
):
    """The running pairs of rows `out` of the [S * N] partials (and the uncentred ones)."""
    tl.store(OUT_MAX + out, run_max, mask=rows)
    tl.store(OUT_SUM + out, run_sum, mask=rows)
    if HAS_RAW:
        tl.store(OUT_MAX0 + out, run_max0, mask=rows)
        tl.store(OUT_SUM0 + out, run_sum0, mask=rows)


@triton.jit
def _row_lse_kernel(
    Y,
    W,
    BIAS,
    CENTER,
    OUT_MAX,
    OUT_SUM,
    OUT_MAX0,
    OUT_SUM0,
    N,
    K,
    D,
    inv_temp,
    k_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_RAW: tl.constexpr,
):
    # HAS_RAW: BIAS is the uncentred bias and CENTER [K] the centre; one tile gives both the
    # centred log-sum-exp (OUT_MAX, OUT_SUM) and the uncentred one (OUT_MAX0, OUT_SUM0), which
    # probability centring's batch statistics need. Otherwise BIAS is the whole bias.
    offs_n, y, out0, k_start, k_end = _row_sweep_start(
        Y, N, D, k_per_split, K, BLOCK_N, BLOCK_D, CAST_FP32
    )
    run_max, run_sum, run_max0, run_sum0 = _lse_start(BLOCK_N)
    for k0 in range(k_start, k_end, BLOCK_K):
        logits, run_max0, run_sum0 = _centred_tile(
            y,
            W,
            BIAS,
            CENTER,
            k0,
            k_end,
            D,
            inv_temp,
            run_max0,
            run_sum0,
            BLOCK_K,
            BLOCK_D,
            CAST_FP32,
            IEEE,
            HAS_RAW,
        )
        run_max, run_sum = _lse_update(run_max, run_sum, logits)
    _store_lse(
        OUT_MAX,
        OUT_SUM,
        OUT_MAX0,
        OUT_SUM0,
        out0 + offs_n,
        offs_n < N,
        run_max,
        run_sum,
        run_max0,
        run_sum0,
        HAS_RAW,
    )


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with float32 accumulation; `a` (float32 weights) is cast to b's dtype."""
    if IEEE:  # noqa: SIM108 (constexpr branch, resolved at compile time)
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a.to(b.dtype), b)
    return out


@triton.jit
def _column_mix_kernel(
    Y,
    W,
    BIAS,
    SHIFT,
    OUT,
    N,
    K,
    D,
    inv_temp,
    n_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
):
    # One program: a block of prototypes against the rows of one split (n_per_split rows, a
    # multiple of BLOCK_N). Its column sums are the split's partial OUT [S, K], added up by the
    # launcher (no atomics, so the sums are deterministic).
    pid_k = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    w, bias = _load_protos(W, BIAS, offs_k, K, D, BLOCK_D, CAST_FP32)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    r_end = tl.minimum((pid_s + 1) * n_per_split, N)
    for r0 in range(pid_s * n_per_split, r_end, BLOCK_N):
        offs_n = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        y = _load_rows(Y, offs_n, r_end, D, BLOCK_D, CAST_FP32)
        shift = tl.load(SHIFT + offs_n, mask=offs_n < r_end, other=float("inf"))
        p = tl.exp(_logits(y, w, bias, offs_k, K, inv_temp, IEEE) - shift[:, None])
        acc += tl.sum(p, axis=0)
    tl.store(OUT + pid_s * K + offs_k, acc, mask=offs_k < K)


@triton.jit
def _row_block(
    Y, SHIFT, pid_n, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAST_FP32: tl.constexpr
):
    """Row offsets [BLOCK_N], rows y [BLOCK_N, BLOCK_D] and shift [BLOCK_N] of row block pid_n.
    Rows past N get shift = inf, as do rows of weight 0 (shift = lse - log 0): their p is 0."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y = _load_rows(Y, offs_n, N, D, BLOCK_D, CAST_FP32)
    shift = tl.load(SHIFT + offs_n, mask=offs_n < N, other=float("inf"))
    return offs_n, y, shift


@triton.jit
def _weighted_tile(
    y,
    shift,
    W,
    BIAS,
    offs_k,
    k_end,
    D,
    inv_temp,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Prototypes offs_k, w [BLOCK_K, BLOCK_D], and p = exp(logits - shift) [BLOCK_N, BLOCK_K]
    (0 in columns from k_end on)."""
    w, bias = _load_protos(W, BIAS, offs_k, k_end, D, BLOCK_D, CAST_FP32)
    return w, tl.exp(_logits(y, w, bias, offs_k, k_end, inv_temp, IEEE) - shift[:, None])


@triton.jit
def _add_column_tile(OUT, offs_k, k_end, D, tile, BLOCK_D: tl.constexpr):
    """OUT[offs_k] += tile for OUT [K, D] float32 and tile [BLOCK_K, BLOCK_D], atomically: every
    row block adds into the same prototype rows. Relaxed order: only the final sum is read, after
    the kernel ends."""
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_k < k_end)[:, None] & (offs_d[None, :] < D)
    tl.atomic_add(OUT + offs_k[:, None] * D + offs_d[None, :], tile, mask=mask, sem="relaxed")


@triton.jit
def _teacher_mix_kernel(
    Y,
    W,
    BIAS,
    SHIFT,
    M,
    MB,
    R,
    RV,
    OUT,
    OUT_B,
    QZ,
    COL,
    QC,
    CENTER,
    LSE0,
    COL_P0,
    N,
    K,
    D,
    inv_temp,
    k_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_V: tl.constexpr,
    HAS_M: tl.constexpr,
    HAS_RAW: tl.constexpr,
):
    # The forward's teacher side in one pass over the teacher tiles p = exp(l - shift): a
    # program owns a block of teacher rows against the K blocks of one split. HAS_V, row side
    # (owned, one partial per split): OUT[s, n] = sum_k p M[k] [S, N, D] (V), OUT_B[s, n] =
    # sum_k p MB[k] [S, N] (u), and the column sums COL[k] += sum_n p, QC[k] += sum_n p RV[n]
    # [K]. HAS_M: QZ[k] += sum_n p R[n] [K, D] (q^T Z). Column side by atomic adds across row
    # blocks. Where both spill (BLOCK_D = 1024) they are two launches. HAS_RAW (with HAS_V):
    # BIAS is the uncentred bias, CENTER [K] the centre, LSE0 [N] the uncentred log-sum-exp,
    # and COL_P0[k] += sum_n exp(l - lse0) (probability centring's statistic) rides along.
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n, y, shift = _row_block(
        Y, SHIFT, tl.program_id(0).to(tl.int64), N, D, BLOCK_N, BLOCK_D, CAST_FP32
    )
    offs_d = tl.arange(0, BLOCK_D)
    if HAS_M:
        r = _load_rows(R, offs_n, N, D, BLOCK_D, CAST_FP32)
    rv = tl.load(RV + offs_n, mask=offs_n < N, other=0.0)
    if HAS_RAW:
        lse0 = tl.load(LSE0 + offs_n, mask=offs_n < N, other=float("inf"))
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_end = tl.minimum((pid_s + 1) * k_per_split, K)
    for k0 in range(pid_s * k_per_split, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_end
        w, bias = _load_protos(W, BIAS, offs_k, k_end, D, BLOCK_D, CAST_FP32)
        logits = _logits(y, w, bias, offs_k, k_end, inv_temp, IEEE)  # [BLOCK_N, BLOCK_K]
        if HAS_RAW:
            p0 = tl.sum(tl.exp(logits - lse0[:, None]), axis=0)
            tl.atomic_add(COL_P0 + offs_k, p0, mask=kmask, sem="relaxed")
            logits = logits - tl.load(CENTER + offs_k, mask=kmask, other=0.0)[None, :]
        p = tl.exp(logits - shift[:, None])
        if HAS_V:
            m, mb = _load_protos(M, MB, offs_k, k_end, D, BLOCK_D, CAST_FP32)
            acc += _dot(p, m, IEEE)
            acc_b += tl.sum(p * mb[None, :], axis=1)
            tl.atomic_add(COL + offs_k, tl.sum(p, axis=0), mask=kmask, sem="relaxed")
            qc = tl.sum(p * rv[:, None], axis=0)
            tl.atomic_add(QC + offs_k, qc, mask=kmask, sem="relaxed")
        if HAS_M:
            _add_column_tile(QZ, offs_k, k_end, D, _dot(tl.trans(p), r, IEEE), BLOCK_D)
    if HAS_V:
        out = pid_s * N + offs_n
        mask = (offs_n < N)[:, None] & (offs_d[None, :] < D)
        tl.store(OUT + out[:, None] * D + offs_d[None, :], acc, mask=mask)
        tl.store(OUT_B + out, acc_b, mask=offs_n < N)


@triton.jit
def _student_grad_kernel(
    Y,
    W,
    BIAS,
    SHIFT,
    DY,
    DW,
    DB,
    N,
    K,
    D,
    inv_temp,
    k_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DW: tl.constexpr,
):
    # One program: a block of student rows against the K blocks of one split. Each logit tile
    # [BLOCK_N, BLOCK_K] is computed once and feeds all three gradients. dY stays in registers
    # across the split (the program owns its rows: a plain store of one partial per split);
    # dW and dB are shared by all row blocks, so they are atomic adds into float32 buffers that
    # already hold the teacher terms -q^T Z and -q^T c.
    pid_s = tl.program_id(1).to(tl.int64)
    offs_n, y, shift = _row_block(
        Y, SHIFT, tl.program_id(0).to(tl.int64), N, D, BLOCK_N, BLOCK_D, CAST_FP32
    )
    acc_y = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    k_end = tl.minimum((pid_s + 1) * k_per_split, K)
    for k0 in range(pid_s * k_per_split, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w, p = _weighted_tile(
            y, shift, W, BIAS, offs_k, k_end, D, inv_temp, BLOCK_D, CAST_FP32, IEEE
        )
        if HAS_DY:
            acc_y += _dot(p, w, IEEE)  # [BLOCK_N, BLOCK_D]
        if HAS_DW:  # dW and dB together: dB is a column sum of the tile already at hand
            _add_column_tile(DW, offs_k, k_end, D, _dot(tl.trans(p), y, IEEE), BLOCK_D)
            tl.atomic_add(DB + offs_k, tl.sum(p, axis=0), mask=offs_k < k_end, sem="relaxed")
    if HAS_DY:  # partial of split pid_s: DY [S, N, D]
        offs_d = tl.arange(0, BLOCK_D)
        out = (pid_s * N + offs_n)[:, None] * D + offs_d[None, :]
        tl.store(DY + out, acc_y, mask=(offs_n < N)[:, None] & (offs_d[None, :] < D))


@triton.jit
def _aligned_grad_kernel(
    YS,
    WS,
    BS,
    LSE_S,
    YT,
    WT,
    BT,
    LSE_T,
    ROW_W,
    DY,
    DW,
    DB,
    COL_Q,
    CROSS,
    CENTER,
    LSE0,
    COL_P0,
    N,
    K,
    D,
    inv_ts,
    inv_tt,
    k_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAST_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_DY: tl.constexpr,
    HAS_DW: tl.constexpr,
    HAS_RAW: tl.constexpr,
):
    # Student row n against teacher row n (iBOT's masked tokens), weight ROW_W[n]. One program:
    # a block of rows against the K blocks of one split. Each K block makes the student tile a
    # and the teacher tile b once; with both log-sum-exps known from the forward's row sweeps,
    # g = W[n] (softmax(a) - softmax(b)) [BLOCK_N, BLOCK_K] is dL/da, and one product each
    # gives dY (row-owned, one partial per split) and dW (atomic adds across row blocks). The
    # cross term sum_k q a and the teacher column sums ride along; nothing N x K is stored.
    # HAS_RAW: BT is the uncentred bias, CENTER [K] the centre and LSE0 [N] the uncentred
    # log-sum-exp, and the uncentred column sums COL_P0 (probability centring's batch
    # statistic) ride along too.
    pid_s = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(0).to(tl.int64)
    offs_n, ys, lse_s = _row_block(YS, LSE_S, pid_n, N, D, BLOCK_N, BLOCK_D, CAST_FP32)
    yt = _load_rows(YT, offs_n, N, D, BLOCK_D, CAST_FP32)
    lse_t = tl.load(LSE_T + offs_n, mask=offs_n < N, other=float("inf"))  # padded rows: q = 0
    row_w = tl.load(ROW_W + offs_n, mask=offs_n < N, other=0.0)
    if HAS_RAW:
        lse0 = tl.load(LSE0 + offs_n, mask=offs_n < N, other=float("inf"))
    acc_y = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_cross = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_end = tl.minimum((pid_s + 1) * k_per_split, K)
    for k0 in range(pid_s * k_per_split, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        ws, bs = _load_protos(WS, BS, offs_k, k_end, D, BLOCK_D, CAST_FP32)
        a = _logits(ys, ws, bs, offs_k, k_end, inv_ts, IEEE)  # -inf from k_end on
        wt, bt = _load_protos(WT, BT, offs_k, k_end, D, BLOCK_D, CAST_FP32)
        b = _logits(yt, wt, bt, offs_k, k_end, inv_tt, IEEE)  # [BLOCK_N, BLOCK_K]
        kmask = offs_k < k_end
        if HAS_RAW:
            p0 = tl.exp(b - lse0[:, None])
            tl.atomic_add(COL_P0 + offs_k, tl.sum(p0, axis=0), mask=kmask, sem="relaxed")
            b = b - tl.load(CENTER + offs_k, mask=kmask, other=0.0)[None, :]
        q = tl.exp(b - lse_t[:, None])
        acc_cross += tl.sum(q * tl.where(kmask[None, :], a, 0.0), axis=1)  # q = 0 where a = -inf
        tl.atomic_add(COL_Q + offs_k, tl.sum(q, axis=0), mask=kmask, sem="relaxed")
        g = row_w[:, None] * (tl.exp(a - lse_s[:, None]) - q)
        if HAS_DY:
            acc_y += _dot(g, ws, IEEE)  # [BLOCK_N, BLOCK_D]
        if HAS_DW:
            _add_column_tile(DW, offs_k, k_end, D, _dot(tl.trans(g), ys, IEEE), BLOCK_D)
            tl.atomic_add(DB + offs_k, tl.sum(g, axis=0), mask=kmask, sem="relaxed")
    out = pid_s * N + offs_n  # rows of the [S * N, ...] partials
    tl.store(CROSS + out, acc_cross, mask=offs_n < N)
    if HAS_DY:
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_n < N)[:, None] & (offs_d[None, :] < D)
        tl.store(DY + out[:, None] * D + offs_d[None, :], acc_y, mask=mask)
