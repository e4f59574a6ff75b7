"""Entry points for aligned rows: student row n against teacher row n (iBOT's masked tokens).

Both are prototype_cross_entropy with targets arange(N)[:, None] and weights[:, None], the same
result on every impl; the triton impl makes it in one sweep after the row log-sum-exps
(kernels/triton_aligned.py). `aligned_cross_entropy_with_raw_means` also returns the batch mean
of the uncentred teacher softmax [K], the statistic probability centring folds into its state:
on triton it rides in the loss's own sweeps, elsewhere see prototype_cross_entropy_with_raw_means.
"""

from __future__ import annotations

import torch
from fastproto.kernels.dispatch import (
    _auto_dtype,
    _require_triton_device,
    prototype_cross_entropy,
    prototype_cross_entropy_with_raw_means,
    resolve_impl,
)
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
) -> tuple[Tensor, Tensor]:
    """-> (loss scalar, teacher_mean_probs [K]) for student [N, D] against teacher [N, D] row by
    row, weights [N]."""
    args = (student, teacher, student_protos, teacher_protos, weights, center, student_temp,
            teacher_temp, vmf)  # fmt: skip
    loss, mean_probs, _ = _aligned(*args, impl=impl, raw_means=False)
    return loss, mean_probs


def aligned_cross_entropy_with_raw_means(
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
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (loss, teacher_mean_probs [K], mean_n softmax(uncentred teacher logits)[n] [K])."""
    args = (student, teacher, student_protos, teacher_protos, weights, center, student_temp,
            teacher_temp, vmf)  # fmt: skip
    loss, mean_probs, raw = _aligned(*args, impl=impl, raw_means=True)
    assert raw is not None
    return loss, mean_probs, raw


def _aligned(student: Tensor, teacher: Tensor, student_protos: Tensor, teacher_protos: Tensor,
             weights: Tensor, center: Tensor, student_temp: float, teacher_temp: float, vmf: bool,
             impl: str, raw_means: bool) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    if student.shape[0] != teacher.shape[0] or weights.shape != (student.shape[0],):
        raise ValueError(
            f"aligned rows need student [N, D], teacher [N, D] and weights [N] with one N, got "
            f"{tuple(student.shape)}, {tuple(teacher.shape)} and {tuple(weights.shape)}; for "
            "other pairings use prototype_cross_entropy with a targets table"
        )
    targets = torch.arange(student.shape[0], device=student.device)[:, None]  # [N, 1]
    args = (student, teacher, student_protos, teacher_protos, targets, weights[:, None], center,
            student_temp, teacher_temp, vmf)  # fmt: skip
    chosen = _auto_dtype(resolve_impl(impl, student.device), impl, student.dtype)
    if chosen != "triton":  # the pair table's own implementations
        if raw_means:
            return prototype_cross_entropy_with_raw_means(*args, impl=chosen)
        loss, mean_probs = prototype_cross_entropy(*args, impl=chosen)
        return loss, mean_probs, None
    check_loss_inputs(*args[:-1])
    _require_triton_device(student.device)
    from fastproto.kernels.triton_aligned import aligned_cross_entropy_triton

    return aligned_cross_entropy_triton(student, teacher, student_protos, teacher_protos, weights,
                                        center, student_temp, teacher_temp, vmf,
                                        raw_means)  # fmt: skip
