"""Entry point for aligned rows: student row n against teacher row n (iBOT's masked tokens).

The same result as prototype_cross_entropy with targets arange(N)[:, None] and weights[:, None]
on every impl; the triton impl makes it in one sweep after the row log-sum-exps
(kernels/triton_aligned.py), raw_means included.
"""

from __future__ import annotations

import torch
from fastproto.kernels.dispatch import (
    _auto_dtype,
    _require_triton_device,
    prototype_cross_entropy,
    resolve_impl,
)
from fastproto.kernels.result import LossResult
from fastproto.kernels.validate import check_loss_inputs
from torch import Tensor


def aligned_cross_entropy(
    student: Tensor,
    teacher: Tensor,
    student_protos: Tensor,
    teacher_protos: Tensor,
    weights: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
    impl: str = "auto",
    *,
    raw_means: bool = False,
) -> LossResult:
    """Student [N, D] against teacher [N, D] row by row with weights [N] -> LossResult: the
    loss, mean_probs [K] over the N teacher rows and, with raw_means=True, raw_means [K] (the
    mean of the uncentred teacher softmax; see prototype_cross_entropy)."""
    _check_aligned(student, teacher, weights)
    targets = torch.arange(student.shape[0], device=student.device)[:, None]  # [N, 1]
    args = (
        student,
        teacher,
        student_protos,
        teacher_protos,
        targets,
        weights[:, None],
        center,
        student_temp,
        teacher_temp,
        vmf,
    )
    chosen = _auto_dtype(resolve_impl(impl, student.device), impl, student.dtype)
    if chosen != "triton":  # the pair table's own implementations
        return prototype_cross_entropy(*args, impl=chosen, raw_means=raw_means)
    check_loss_inputs(*args[:-1])
    _require_triton_device(student.device)
    from fastproto.kernels.triton_aligned import aligned_cross_entropy_triton

    return LossResult(
        *aligned_cross_entropy_triton(
            student,
            teacher,
            student_protos,
            teacher_protos,
            weights,
            center,
            student_temp,
            teacher_temp,
            vmf,
            raw_means,
        )
    )


def _check_aligned(student: Tensor, teacher: Tensor, weights: Tensor) -> None:
    if student.shape[0] != teacher.shape[0] or weights.shape != (student.shape[0],):
        raise ValueError(
            f"aligned rows need student [N, D], teacher [N, D] and weights [N] with one N, got "
            f"{tuple(student.shape)}, {tuple(teacher.shape)} and {tuple(weights.shape)}; for "
            "other pairings use prototype_cross_entropy with a targets table"
        )
