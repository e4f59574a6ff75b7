"""DINO's multi-crop cross-entropy on the [CLS] prototypes, through the fused prototype loss.

Row layout is crop-major. The student sees S crops of B images, rows [S*B, D], crop c in rows
c*B .. c*B + B - 1, the first G crops global; the teacher sees the G global crops, rows [G*B, D]
in the same layout. With P_t(.) = softmax(b) (centred, sharpened) and P_s(.) = softmax(a):

    loss = 1 / (G*S - G) * sum_{g < G} sum_{c < S, c != g} 1/B sum_i H(P_t(x_{g,i}), P_s(x_{c,i}))

that is, each pair of views (teacher g, student c != g) is averaged over the batch, then the
pairs are averaged. As a pairing table for `prototype_cross_entropy`: student row c*B + i has
P = G columns, column g pointing at teacher row g*B + i (or -1 when c == g), each with weight
1 / (B * (G*S - G)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastproto.kernels import LossResult, prototype_cross_entropy


def _check_crops(num_crops: int, num_global: int, batch_size: int) -> None:
    if num_global < 1:
        raise ValueError(f"num_global must be >= 1, got {num_global}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_global > num_crops:
        raise ValueError(
            f"num_global={num_global} exceeds the number of student crops {num_crops}: the "
            "student must see every global crop, so pass num_crops >= num_global"
        )
    if num_crops < 2:
        raise ValueError(
            "a single crop gives no (teacher view, other student view) pair: pass at least two "
            "crops per image (two global, or one global plus local crops)"
        )


def dino_pairing(
    num_crops: int,
    num_global: int,
    batch_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """(targets [S*B, G] int64, weights [S*B, G]) for DINO's pairs; see the module docstring."""
    _check_crops(num_crops, num_global, batch_size)
    crop = torch.arange(num_crops, device=device)[:, None, None]  # [S, 1, 1]
    image = torch.arange(batch_size, device=device)[None, :, None]  # [1, B, 1]
    view = torch.arange(num_global, device=device)[None, None, :]  # [1, 1, G]
    targets = torch.where(crop == view, -1, view * batch_size + image)  # [S, B, G]
    pairs = num_global * num_crops - num_global
    # Divide in `dtype` so float64 weights are exact to float64, not a rounded float32.
    weights = (targets >= 0).to(dtype) / (batch_size * pairs)  # [S, B, G]
    return targets.reshape(-1, num_global), weights.reshape(-1, num_global)


def dino_loss(
    student: Tensor,
    teacher: Tensor,
    student_protos: Tensor,
    teacher_protos: Tensor,
    center: Tensor,
    num_global: int,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
    impl: str = "auto",
    *,
    raw_means: bool = False,
    estep: str | None = None,
) -> LossResult:
    """DINO loss for student [S*B, D] and teacher [G*B, D] -> LossResult: the loss, mean_probs
    [K], the mean of the centred teacher softmax over the G*B teacher rows, with
    raw_means=True raw_means [K], the same mean of the uncentred softmax (probability
    centring's statistic), and with estep the E-step statistics of the G*B teacher rows (the
    prototypes' online EM); see prototype_cross_entropy."""
    targets, weights = _pairing(student, teacher, num_global)
    return prototype_cross_entropy(
        student,
        teacher,
        student_protos,
        teacher_protos,
        targets,
        weights,
        center,
        student_temp,
        teacher_temp,
        vmf,
        impl,
        raw_means=raw_means,
        estep=estep,
    )


def _pairing(student: Tensor, teacher: Tensor, num_global: int) -> tuple[Tensor, Tensor]:
    """Checked row layout -> dino_pairing's (targets, weights) for these rows."""
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(
            f"student and teacher must be 2-D [rows, D], got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    if num_global < 1:
        raise ValueError(f"num_global must be >= 1, got {num_global}")
    if teacher.shape[0] == 0 or teacher.shape[0] % num_global:
        raise ValueError(
            f"teacher has {teacher.shape[0]} rows, not a positive multiple of num_global="
            f"{num_global}: stack the G global crops of B images as [G*B, D]"
        )
    batch = teacher.shape[0] // num_global
    if student.shape[0] % batch:
        raise ValueError(
            f"student has {student.shape[0]} rows, not a multiple of the batch size B={batch} "
            f"(teacher rows / num_global): stack the S crops of B images as [S*B, D]"
        )
    # Weights in at least float32: 1 / (B * pairs) rounded to bf16 would bias the loss.
    weight_dtype = torch.promote_types(student.dtype, torch.float32)
    return dino_pairing(student.shape[0] // batch, num_global, batch, student.device, weight_dtype)
