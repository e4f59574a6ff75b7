"""Materialised prototype cross-entropy: the slow, obviously correct twin of the fused kernels.

Shapes: student [Ns, D], teacher [Nt, D], prototypes [K, D], targets/weights [Ns, P], center [K].

    a[n, k] = <w_s[k], y_s[n]> / tau_s + vmf_s[k]                 student logits   [Ns, K]
    b[m, k] = <w_t[k], y_t[m]> / tau_t + vmf_t[k] - center[k]     teacher logits   [Nt, K]
    loss    = sum_{n,p} weights[n,p] * (lse(a[n]) - <softmax(b[targets[n,p]]), a[n]>)

It holds [Ns, K] and [Nt, K] tensors; run it in float64 to get the truth.
"""

from __future__ import annotations

import torch
from fastproto.kernels.result import Responsibilities

from fastproto.vmf import log_normalizer


def prototype_bias(protos: torch.Tensor, temp: float, vmf: bool) -> torch.Tensor:
    """Per-prototype additive logit term [K]: log C_p(||w_k|| / temp) when `vmf`, else zeros."""
    if not vmf:
        return protos.new_zeros(protos.shape[0])
    kappa = protos.norm(dim=1) / temp
    return log_normalizer(kappa, protos.shape[1])


def teacher_logits(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
) -> torch.Tensor:
    """Centred, tempered teacher logits b [Nt, K]."""
    bias = prototype_bias(teacher_protos, teacher_temp, vmf) - center
    return teacher @ teacher_protos.T / teacher_temp + bias


def student_logits(
    student: torch.Tensor, student_protos: torch.Tensor, student_temp: float, vmf: bool
) -> torch.Tensor:
    """Tempered student logits a [Ns, K]."""
    bias = prototype_bias(student_protos, student_temp, vmf)
    return student @ student_protos.T / student_temp + bias


def teacher_statistics_reference(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp [Nt] and column mean of softmax [K] of the teacher logits."""
    with torch.no_grad():
        logits = teacher_logits(teacher, teacher_protos, center, teacher_temp, vmf)
        row_lse = torch.logsumexp(logits, dim=1)
        column_mean = torch.exp(logits - row_lse[:, None]).mean(dim=0)
    return row_lse, column_mean


def teacher_responsibilities_reference(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
) -> Responsibilities:
    """E-step statistics: r = softmax of the teacher logits minus `center` [Nt, K]; mass = the
    column sums of r [K], resultant = r^T Y_t [K, D]."""
    with torch.no_grad():
        r = torch.softmax(teacher_logits(teacher, teacher_protos, center, teacher_temp, vmf), 1)
        return Responsibilities(r.sum(dim=0), r.T @ teacher.to(r.dtype))


def prototype_cross_entropy_reference(
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
    """Weighted cross-entropy over (student row, teacher row) pairs; see the module docstring."""
    with torch.no_grad():
        b = teacher_logits(teacher.detach(), teacher_protos.detach(), center, teacher_temp, vmf)
        probs = torch.softmax(b, dim=1)  # [Nt, K]
        teacher_mean_probs = probs.mean(dim=0)  # [K]
    a = student_logits(student, student_protos, student_temp, vmf)  # [Ns, K]
    row_lse = torch.logsumexp(a, dim=1)  # [Ns]
    loss = a.new_zeros(())
    for p in range(targets.shape[1]):
        valid = targets[:, p] >= 0
        rows = targets[:, p].clamp_min(0)
        cross = (probs[rows] * a).sum(dim=1)  # [Ns]
        pair_weight = torch.where(valid, weights[:, p].to(a.dtype), a.new_zeros(()))
        loss = loss + (pair_weight * (row_lse - cross)).sum()
    return loss, teacher_mean_probs
