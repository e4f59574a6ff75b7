"""One signature, three implementations: validation and the choice of `impl`."""

from __future__ import annotations

import os

import torch
from fastproto.kernels.chunked import (
    prototype_cross_entropy_chunked,
    teacher_responsibilities_chunked,
    teacher_statistics_chunked,
)
from fastproto.kernels.reference import (
    prototype_cross_entropy_reference,
    teacher_responsibilities_reference,
    teacher_statistics_reference,
)
from fastproto.kernels.result import ESTEPS, LossResult, Responsibilities
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


def _check_estep(estep: str | None) -> None:
    if estep is not None and estep not in ESTEPS:
        raise ValueError(f"estep must be None or one of {ESTEPS}, got {estep!r}")


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
    *,
    raw_means: bool = False,
    estep: str | None = None,
) -> LossResult:
    """Weighted prototype cross-entropy of student [Ns, D] against teacher [Nt, D] through the
    pair table targets, weights [Ns, P] (math: kernels/reference.py).

    -> LossResult: the loss, mean_probs [K] over the Nt teacher rows and, with raw_means=True,
    raw_means [K], the mean of the uncentred teacher softmax; with estep "uncentred" (or
    "centred") the E-step statistics of the teacher rows under the uncentred softmax (or the
    loss's targets). The chunked loss and the triton kernels make raw_means in their own
    sweeps, and the chunked loss the E-step too; elsewhere they take a teacher-only pass.
    """
    args = (
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
    )
    check_loss_inputs(*args[:-1])
    _check_estep(estep)
    chosen = _auto_dtype(resolve_impl(impl, student.device), impl, student.dtype)
    if chosen == "chunked":
        return prototype_cross_entropy_chunked(*args, raw_means=raw_means, estep=estep)
    if chosen == "triton":
        _require_triton_device(student.device)
        from fastproto.kernels.triton_loss import prototype_cross_entropy_triton

        loss, mean_probs, raw = prototype_cross_entropy_triton(*args, raw_means=raw_means)
    else:
        loss, mean_probs = prototype_cross_entropy_reference(*args)
        zero = torch.zeros_like(center)
        stat = teacher_statistics if raw_means else None
        raw = stat(teacher, teacher_protos, zero, teacher_temp, vmf, chosen)[1] if stat else None
    stats = None
    if estep is not None:
        shift = center if estep == "centred" else torch.zeros_like(center)
        # the triton kernels do not form r^T Y_t yet: a chunked pass on the GPU's tensors
        how = "reference" if chosen == "reference" else "chunked"
        stats = teacher_responsibilities(teacher, teacher_protos, shift, teacher_temp, vmf, how)
    return LossResult(loss, mean_probs, raw if raw_means else None, stats)


def teacher_responsibilities(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    impl: str = "auto",
) -> Responsibilities:
    """E-step statistics of the teacher rows [Nt, D] under the softmax of their logits minus
    `center` [K] (zeros: the uncentred softmax): column sums [K] and r^T Y_t [K, D]. Any impl
    but "reference" streams over K (the triton kernels have no such sweep: chunked runs)."""
    check_teacher_inputs(teacher, teacher_protos, center, teacher_temp)
    chosen = _auto_dtype(resolve_impl(impl, teacher.device), impl, teacher.dtype)
    args = (teacher, teacher_protos, center, teacher_temp, vmf)
    if chosen == "reference":
        return teacher_responsibilities_reference(*args)
    return teacher_responsibilities_chunked(*args)


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
