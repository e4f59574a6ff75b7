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
from fastproto.kernels.result import LossResult, Responsibilities

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


def _fold_lse(
    run: tuple[torch.Tensor, torch.Tensor], logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds one logit tile [N, block] (overwritten) into a running (max, sum of exp(l - max))
    [N] each, as flash attention does."""
    run_max, run_sum = run
    new_max = torch.maximum(run_max, logits.amax(dim=1))
    logits -= new_max[:, None]
    return new_max, run_sum * torch.exp(run_max - new_max) + logits.exp_().sum(dim=1)


def _row_lse(
    rows: torch.Tensor,
    protos: torch.Tensor,
    bias: torch.Tensor,
    inv_temp: float,
    block: int,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log-sum-exp over all K of each row's logits [N] and None or, with center [K] (`bias` then
    the uncentred bias), the log-sum-exps of the logits minus center and of the uncentred
    logits, from the same tiles."""
    start = (rows.new_full((rows.shape[0],), float("-inf")), rows.new_zeros(rows.shape[0]))
    run, raw = start, start
    for blk in _blocks(protos.shape[0], block):
        logits = _tile(rows, protos[blk], bias[blk], inv_temp)  # [N, block]
        if center is not None:
            centred = logits - center[blk]  # [N, block]
            raw = _fold_lse(raw, logits)
            logits = centred
        run = _fold_lse(run, logits)
    lse = run[0] + torch.log(run[1])
    return lse, None if center is None else raw[0] + torch.log(raw[1])


@dataclass(frozen=True)
class _TeacherRows:
    """The teacher side of the forward, in the compute dtype: rows y [Nt, D], prototypes [K, D],
    bias [K] and the log-sum-exp lse [Nt] of the loss's (centred) logits. With `center` [K] the
    bias is the uncentred one, the loss's logits are those minus center, and raw_lse [Nt] is the
    uncentred logits' log-sum-exp (probability centring's and the uncentred E-step's softmax)."""

    y: torch.Tensor
    protos: torch.Tensor
    bias: torch.Tensor
    inv_temp: float
    lse: torch.Tensor
    center: torch.Tensor | None = None
    raw_lse: torch.Tensor | None = None

    def softmax_tiles(self, blk: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(q, r) on one block [Nt, block]: the loss's targets and, with a centre, the uncentred
        softmax (else None)."""
        logits = _tile(self.y, self.protos[blk], self.bias[blk], self.inv_temp)  # [Nt, block]
        if self.center is None or self.raw_lse is None:
            return logits.sub_(self.lse[:, None]).exp_(), None
        raw = (logits - self.raw_lse[:, None]).exp_()
        return logits.sub_(self.center[blk]).sub_(self.lse[:, None]).exp_(), raw


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
    raw_col_sum      [K], the column sums of the uncentred softmax r; None without a centre.
    resultant        [K, D], r^T Y_t (estep "uncentred") or q^T Y_t ("centred"); else None.
    """

    student_lse: torch.Tensor
    col_sum: torch.Tensor
    expected_protos: torch.Tensor
    expected_bias: torch.Tensor
    target_grad_w: torch.Tensor | None
    target_grad_b: torch.Tensor
    raw_col_sum: torch.Tensor | None
    resultant: torch.Tensor | None


def _teacher_pass(
    ys: torch.Tensor,
    ws: torch.Tensor,
    bs: torch.Tensor,
    teacher: _TeacherRows,
    rows: torch.Tensor,
    pair_w: torch.Tensor,
    inv_ts: float,
    block: int,
    need_w: bool,
    estep: str | None,
) -> ForwardPass:
    """One pass over K of the student rows `ys` [Ns, D] and the teacher rows (pair table rows,
    pair_w [Ns, P]) -> ForwardPass. The E-step's resultant is one more [block, Nt] x [Nt, D]
    product per block on tiles the pass makes anyway."""
    (k, d), nt, yt = ws.shape, teacher.y.shape[0], teacher.y
    z = _scatter_pairs(ys, rows, pair_w, nt) if need_w else None  # [Nt, D]
    c = _scatter_pairs(pair_w.new_ones(ys.shape[0]), rows, pair_w, nt)  # [Nt]
    run = (ys.new_full((ys.shape[0],), float("-inf")), ys.new_zeros(ys.shape[0]))
    col_sum, v, u = ys.new_empty(k), yt.new_zeros(nt, d), yt.new_zeros(nt)
    qz = torch.empty(k, d, dtype=ys.dtype, device=ws.device) if need_w else None
    qc = ys.new_empty(k)
    raw_col = ys.new_empty(k) if teacher.center is not None else None
    resultant = yt.new_empty(k, d) if estep is not None else None
    for blk in _blocks(k, block):
        run = _fold_lse(run, _tile(ys, ws[blk], bs[blk], inv_ts))  # student tile [Ns, block]
        q, r = teacher.softmax_tiles(blk)  # [Nt, block] each (r None without a centre)
        col_sum[blk] = q.sum(dim=0)
        v.addmm_(q, ws[blk].to(ys.dtype))
        u.addmv_(q, bs[blk])
        qc[blk] = q.T @ c
        if qz is not None and z is not None:
            torch.mm(q.T, z, out=qz[blk])
        if raw_col is not None and r is not None:
            raw_col[blk] = r.sum(dim=0)
        if resultant is not None:
            resp = r if estep == "uncentred" else q
            assert resp is not None  # the uncentred E-step comes with a centre
            torch.mm(resp.T, yt, out=resultant[blk])
    return ForwardPass(run[0] + torch.log(run[1]), col_sum, v, u, qz, qc, raw_col, resultant)


def _empty_if_none(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """autograd.Function outputs must be tensors: a 0-element stand-in for an absent one."""
    return like.new_empty(0) if t is None else t


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
        center,
        targets,
        weights,
        inv_ts: float,
        inv_tt: float,
        block: int,
        estep: str | None,
    ):
        """center [K] or None: with a centre bias_t is the uncentred bias and the uncentred
        statistics come along. -> (loss, mean_probs [K], raw_means [K] or empty, E-step mass
        [K] or empty, E-step resultant [K, D] or empty)."""
        cd = compute_dtype(student.dtype)
        rows, pair_w = pair_table(targets, weights, cd)
        ys, ws, bs = student.detach().to(cd), student_protos.detach(), bias_s.detach()
        yt, wt, bt = teacher.detach().to(cd), teacher_protos.detach(), bias_t.detach().to(cd)
        ct = None if center is None else center.detach().to(cd)
        lse_t, raw_lse = _row_lse(yt, wt, bt, inv_tt, block, ct)  # [Nt] each
        side = _TeacherRows(yt, wt, bt, inv_tt, lse_t, ct, raw_lse)
        need_w = ctx.needs_input_grad[1]
        fwd = _teacher_pass(ys, ws, bs, side, rows, pair_w, inv_ts, block, need_w, estep)
        lse_s, v, u = fwd.student_lse, fwd.expected_protos, fwd.expected_bias  # [Ns], [Nt, D], [Nt]
        row_w = pair_w.sum(dim=1)  # [Ns]
        cross = (ys * _gather_pairs(v, rows, pair_w)).sum() * inv_ts + (pair_w * u[rows]).sum()
        loss = (row_w * lse_s).sum() - cross
        qz, qc = fwd.target_grad_w, fwd.target_grad_b  # [K, D] or None, [K]
        ctx.save_for_backward(student, student_protos, bias_s, rows, pair_w, lse_s, v, qz, qc)
        ctx.inv_ts, ctx.block = inv_ts, block
        nt = teacher.shape[0]
        mean_probs = fwd.col_sum / nt
        raw = _empty_if_none(None if fwd.raw_col_sum is None else fwd.raw_col_sum / nt, qc)
        mass = fwd.col_sum if estep == "centred" else fwd.raw_col_sum
        mass = _empty_if_none(mass if estep is not None else None, qc)
        resultant = _empty_if_none(fwd.resultant, qc)
        ctx.mark_non_differentiable(mean_probs, raw, mass, resultant)
        return loss, mean_probs, raw, mass, resultant

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_no_grads: torch.Tensor):
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
        return out_y, out_w, out_b, *([None] * 10)


def _check_block(block: int) -> None:
    if block < 1:
        raise ValueError(f"block must be a positive number of prototypes, got {block}")


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
    *,
    raw_means: bool = False,
    estep: str | None = None,
) -> LossResult:
    """The loss streaming over K in `block`-sized pieces -> LossResult. raw_means and the
    E-step statistics (estep "uncentred" or "centred") come from the loss's own two passes
    over K: the uncentred logits are the same tiles before the centre is subtracted."""
    if block is None:
        block = default_block(max(student.shape[0], teacher.shape[0]), student.device)
    _check_block(block)
    uncentred = raw_means or estep == "uncentred"
    bias_s = student_bias(student_protos, student_temp, vmf)  # [K], autograd through ||w_s||
    # with a centre in hand the bias is the uncentred one and the passes subtract the centre
    shift = torch.zeros_like(center) if uncentred else center  # [K]
    bias_t = teacher_bias(teacher_protos, shift, teacher_temp, vmf)
    loss, mean_probs, raw, mass, resultant = _ChunkedLoss.apply(
        student,
        student_protos,
        bias_s,
        teacher,
        teacher_protos,
        bias_t,
        center if uncentred else None,
        targets,
        weights,
        1.0 / student_temp,
        1.0 / teacher_temp,
        block,
        estep,
    )
    stats = None if estep is None else Responsibilities(mass, resultant)
    return LossResult(loss, mean_probs, raw if raw_means else None, stats)


def _teacher_sweep(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    block: int | None,
    with_resultant: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Teacher rows alone, two passes over K of [Nt, block] tiles of the softmax r of the logits
    minus `center` [K] -> (row lse [Nt], column sums [K], r^T Y_t [K, D] or None)."""
    if block is None:
        block = default_block(teacher.shape[0], teacher.device)
    _check_block(block)
    with torch.no_grad():
        yt = teacher.to(compute_dtype(teacher.dtype))
        bias_t = teacher_bias(teacher_protos, center, teacher_temp, vmf)
        lse, _ = _row_lse(yt, teacher_protos, bias_t, 1.0 / teacher_temp, block)  # [Nt]
        side = _TeacherRows(yt, teacher_protos, bias_t, 1.0 / teacher_temp, lse)
        (k, d), col_sum = teacher_protos.shape, yt.new_empty(teacher_protos.shape[0])
        resultant = yt.new_empty(k, d) if with_resultant else None
        for blk in _blocks(k, block):
            r = side.softmax_tiles(blk)[0]  # [Nt, block]
            col_sum[blk] = r.sum(dim=0)
            if resultant is not None:
                torch.mm(r.T, yt, out=resultant[blk])
    return lse, col_sum, resultant


def teacher_statistics_chunked(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp [Nt] and column mean probabilities [K] of the teacher logits."""
    args = (teacher, teacher_protos, center, teacher_temp, vmf, block)
    lse, col_sum, _ = _teacher_sweep(*args, with_resultant=False)
    return lse, col_sum / teacher.shape[0]


def teacher_responsibilities_chunked(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    block: int | None = None,
) -> Responsibilities:
    """E-step statistics of the teacher rows under the softmax of the logits minus `center`
    [K] (zeros: the uncentred softmax)."""
    args = (teacher, teacher_protos, center, teacher_temp, vmf, block)
    _, mass, resultant = _teacher_sweep(*args, with_resultant=True)
    assert resultant is not None
    return Responsibilities(mass, resultant)
