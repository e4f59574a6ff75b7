"""Plain-loop twins of the losses and centring schemes, written from the papers' formulas.

Every function here works one row (one image, one crop, one token) at a time in whatever dtype
it is given (tests pass float64), so it is slow and obviously correct. Autograd flows through the
student side, so gradients can be compared too. Notation: a logit row for an embedding y [D]
against prototypes W [K, D] at temperature tau is <W[k], y> / tau (+ log C_p(||W[k]|| / tau)
with vMF, DINO-vMF eqs. 6-7).
"""

from __future__ import annotations

import pytest
import torch
from fastproto.kernels import prototype_cross_entropy, teacher_statistics

from fastproto.vmf import log_normalizer


def vmf_bias(protos: torch.Tensor, tau: float, vmf: bool) -> torch.Tensor:
    """log C_p(||W[k]|| / tau) for every prototype [K] with vMF, else zeros."""
    if not vmf:
        return protos.new_zeros(protos.shape[0])
    return log_normalizer(protos.norm(dim=1) / tau, protos.shape[1])


def logit_row(
    y: torch.Tensor, protos: torch.Tensor, tau: float, bias: torch.Tensor
) -> torch.Tensor:
    """Logits [K] of one embedding y [D]; `bias` [K] from `vmf_bias`."""
    return torch.mv(protos, y) / tau + bias


def teacher_logits_loop(
    teacher: torch.Tensor, protos: torch.Tensor, tau: float, vmf: bool
) -> torch.Tensor:
    """Uncentred teacher logits L [Nt, K], one row at a time."""
    bias = vmf_bias(protos, tau, vmf)
    return torch.stack([logit_row(y, protos, tau, bias) for y in teacher])


def cross_entropy_row(target_probs: torch.Tensor, student_row: torch.Tensor) -> torch.Tensor:
    """H(t, s) = -sum_k t[k] log softmax(s)[k]."""
    return -(target_probs * torch.log_softmax(student_row, dim=0)).sum()


def dino_loss_loop(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_protos: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    num_global: int,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
) -> torch.Tensor:
    """DINO: mean over pairs (teacher view g, student view c != g) of the batch-mean H(P_t, P_s)."""
    batch = teacher.shape[0] // num_global
    crops = student.shape[0] // batch
    # One softmax per teacher row and one log_softmax per student row, then loop over pairs.
    t_bias = vmf_bias(teacher_protos, teacher_temp, vmf)
    s_bias = vmf_bias(student_protos, student_temp, vmf)
    targets = [
        torch.softmax(logit_row(y, teacher_protos, teacher_temp, t_bias) - center, dim=0)
        for y in teacher
    ]
    log_probs = [
        torch.log_softmax(logit_row(y, student_protos, student_temp, s_bias), dim=0)
        for y in student
    ]
    total = student.new_zeros(())
    pairs = 0
    for g in range(num_global):
        for c in range(crops):
            if c == g:
                continue
            pair = student.new_zeros(())
            for i in range(batch):
                pair = pair - (targets[g * batch + i] * log_probs[c * batch + i]).sum()
            total = total + pair / batch
            pairs += 1
    return total / pairs


def ibot_loss_loop(
    student_tokens: torch.Tensor,
    teacher_tokens: torch.Tensor,
    masks: torch.Tensor,
    student_protos: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
) -> torch.Tensor:
    """iBOT MIM on full token grids [I, T, D] with masks [I, T] (DINO-vMF A.5, L_[MIM]).

    Per image: sum_i m_i H(P_t(u_i), P_s(u_hat_i)) / max(sum_i m_i, 1); then the mean over images.
    """
    t_bias = vmf_bias(teacher_protos, teacher_temp, vmf)
    s_bias = vmf_bias(student_protos, student_temp, vmf)
    total = student_tokens.new_zeros(())
    for image in range(student_tokens.shape[0]):
        per_image = student_tokens.new_zeros(())
        for i in range(student_tokens.shape[1]):
            if not bool(masks[image, i]):
                continue
            t_row = logit_row(teacher_tokens[image, i], teacher_protos, teacher_temp, t_bias)
            target = torch.softmax(t_row - center, dim=0)
            s_row = logit_row(student_tokens[image, i], student_protos, student_temp, s_bias)
            per_image = per_image + cross_entropy_row(target, s_row)
        total = total + per_image / max(int(masks[image].sum()), 1)
    return total / student_tokens.shape[0]


def sinkhorn_plain(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """Materialised Sinkhorn-Knopp on exp(L) [B, K] (paper 1 A.2).

    The logits are first row-normalised (paper 1 takes L normalised over K); each iteration then
    divides every column by its sum and every row by its sum. Rows are shifted by their maximum
    before exp, which the first row normalisation cancels exactly.
    """
    q = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    q = q / q.sum(dim=1, keepdim=True)
    for _ in range(iterations):
        q = q / q.sum(dim=0, keepdim=True)
        q = q / q.sum(dim=1, keepdim=True)
    return q


def sinkhorn_one_iteration_eq3(logits: torch.Tensor) -> torch.Tensor:
    """Paper 1 eq. 3: softmax over k of L[b, k] - log(mean_b P[b, k]), looping over rows."""
    probs = torch.stack([torch.softmax(row, dim=0) for row in logits])  # [B, K]
    log_mean = torch.log(sum(probs[b] for b in range(probs.shape[0])) / probs.shape[0])
    return torch.stack([torch.softmax(row - log_mean, dim=0) for row in logits])


def me_max_loop(
    student: torch.Tensor, student_protos: torch.Tensor, student_temp: float, vmf: bool
) -> torch.Tensor:
    """sum_k pbar[k] log pbar[k] with pbar = mean over rows of softmax(student logits)."""
    bias = vmf_bias(student_protos, student_temp, vmf)
    rows = [torch.softmax(logit_row(y, student_protos, student_temp, bias), dim=0) for y in student]
    mean = sum(rows) / len(rows)
    return (mean * torch.log(mean)).sum()


def require_impl(impl: str) -> None:
    """Skip (with the reason) only while `impl` is reported as not built yet by the dispatcher."""
    one = torch.ones(1, 4)
    try:
        prototype_cross_entropy(
            one,
            one,
            one,
            one,
            torch.zeros(1, 1, dtype=torch.long),
            torch.ones(1, 1),
            torch.zeros(1),
            0.1,
            0.1,
            False,
            impl=impl,
        )
        teacher_statistics(one, one, torch.zeros(1), 0.1, False, impl=impl)
    except NotImplementedError as error:
        pytest.skip(f"impl={impl!r} is not built yet in fastproto.kernels: {error}")
