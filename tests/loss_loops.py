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


def logit_row(y: torch.Tensor, protos: torch.Tensor, tau: float, vmf: bool) -> torch.Tensor:
    """Logits [K] of one embedding y [D]."""
    row = torch.stack([torch.dot(w, y) for w in protos]) / tau
    if vmf:
        row = row + log_normalizer(protos.norm(dim=1) / tau, protos.shape[1])
    return row


def teacher_logits_loop(
    teacher: torch.Tensor, protos: torch.Tensor, tau: float, vmf: bool
) -> torch.Tensor:
    """Uncentred teacher logits L [Nt, K], one row at a time."""
    return torch.stack([logit_row(y, protos, tau, vmf) for y in teacher])


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
    total = student.new_zeros(())
    pairs = 0
    for g in range(num_global):
        for c in range(crops):
            if c == g:
                continue
            pair = student.new_zeros(())
            for i in range(batch):
                t_row = logit_row(teacher[g * batch + i], teacher_protos, teacher_temp, vmf)
                target = torch.softmax(t_row - center, dim=0)
                s_row = logit_row(student[c * batch + i], student_protos, student_temp, vmf)
                pair = pair + cross_entropy_row(target, s_row)
            total = total + pair / batch
            pairs += 1
    return total / pairs


def ibot_loss_loop(
    student_patches: torch.Tensor,
    teacher_patches: torch.Tensor,
    image_index: torch.Tensor,
    num_images: int,
    student_protos: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
) -> torch.Tensor:
    """iBOT MIM: per image the mean over its masked tokens (0 if none), then mean over images."""
    total = student_patches.new_zeros(())
    for image in range(num_images):
        per_image = student_patches.new_zeros(())
        count = 0
        for n in range(student_patches.shape[0]):
            if int(image_index[n]) != image:
                continue
            t_row = logit_row(teacher_patches[n], teacher_protos, teacher_temp, vmf)
            target = torch.softmax(t_row - center, dim=0)
            s_row = logit_row(student_patches[n], student_protos, student_temp, vmf)
            per_image = per_image + cross_entropy_row(target, s_row)
            count += 1
        total = total + per_image / max(count, 1)
    return total / num_images


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
    rows = [torch.softmax(logit_row(y, student_protos, student_temp, vmf), dim=0) for y in student]
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
