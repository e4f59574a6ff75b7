"""One signature, three implementations: validation and the choice of `impl`."""

from __future__ import annotations

import os

import torch
from fastproto.kernels.chunked import (
    prototype_cross_entropy_chunked,
    teacher_statistics_chunked,
)
from fastproto.kernels.reference import (
    prototype_cross_entropy_reference,
    teacher_statistics_reference,
)
from fastproto.kernels.validate import check_loss_inputs, check_teacher_inputs

IMPLS = ("auto", "reference", "chunked", "triton")


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map "auto" to the fastest implementation available on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return "triton" if device.type == "cuda" else "chunked"


def _auto_dtype(chosen: str, impl: str, dtype: torch.dtype) -> str:
    """ "auto" falls back to chunked for float64, which the Triton kernels do not take."""
    if impl == "auto" and chosen == "triton" and dtype == torch.float64:
        return "chunked"
    return chosen


def _require_triton_device(device: torch.device) -> None:
    """Triton needs CUDA tensors, or CPU tensors under the interpreter (TRITON_INTERPRET=1)."""
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return
    raise ValueError(
        f"impl='triton' needs CUDA tensors, got {device.type}; use impl='chunked' on this "
        "device, or set TRITON_INTERPRET=1 before importing triton to run the kernels slowly"
    )


def prototype_cross_entropy(
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
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted prototype cross-entropy -> (loss scalar, teacher_mean_probs [K])."""
    args = (student, teacher, student_protos, teacher_protos, targets, weights, center,
            student_temp, teacher_temp, vmf)  # fmt: skip
    loss, mean_probs, _ = _pair_loss(args, impl, raw_means=False)
    return loss, mean_probs


def prototype_cross_entropy_with_raw_means(
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
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prototype_cross_entropy and the batch mean of the uncentred teacher softmax [K], the
    statistic probability centring folds into its state: on triton it rides in the loss's own
    sweeps, elsewhere it is teacher_statistics with a zero centre, as the centring module
    computes it."""
    args = (student, teacher, student_protos, teacher_protos, targets, weights, center,
            student_temp, teacher_temp, vmf)  # fmt: skip
    loss, mean_probs, raw = _pair_loss(args, impl, raw_means=True)
    assert raw is not None
    return loss, mean_probs, raw


Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _pair_loss(args: tuple, impl: str, raw_means: bool) -> Triple:
    student, teacher, _, teacher_protos, _, _, center, _, teacher_temp, vmf = args
    check_loss_inputs(*args[:-1])
    chosen = _auto_dtype(resolve_impl(impl, student.device), impl, student.dtype)
    if chosen == "triton":
        _require_triton_device(student.device)
        from fastproto.kernels.triton_loss import prototype_cross_entropy_triton

        return prototype_cross_entropy_triton(*args, raw_means=raw_means)
    run = prototype_cross_entropy_reference if chosen == "reference" else (
        prototype_cross_entropy_chunked
    )  # fmt: skip
    loss, mean_probs = run(*args)
    if not raw_means:
        return loss, mean_probs, None
    zero = torch.zeros_like(center)
    return loss, mean_probs, teacher_statistics(teacher, teacher_protos, zero, teacher_temp, vmf,
                                                chosen)[1]  # fmt: skip


def teacher_statistics(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher row log-sum-exp [Nt] and column mean probabilities [K]."""
    check_teacher_inputs(teacher, teacher_protos, center, teacher_temp)
    chosen = _auto_dtype(resolve_impl(impl, teacher.device), impl, teacher.dtype)
    args = (teacher, teacher_protos, center, teacher_temp, vmf)
    if chosen == "reference":
        return teacher_statistics_reference(*args)
    if chosen == "chunked":
        return teacher_statistics_chunked(*args)
    _require_triton_device(teacher.device)
    from fastproto.kernels.triton_loss import teacher_statistics_triton

    return teacher_statistics_triton(*args)
