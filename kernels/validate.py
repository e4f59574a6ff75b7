"""Boundary checks for the prototype loss: every message names the problem and the fix."""

from __future__ import annotations

import torch

from fastproto.value_checks import check_values


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_teacher_inputs(
    teacher: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    min_rows: int = 1,
) -> None:
    """The loss needs a teacher row; centring (min_rows=0) also takes a batch without one."""
    for name, t in (("teacher", teacher), ("teacher_protos", teacher_protos), ("center", center)):
        _require(t.is_floating_point(), f"{name} must be a floating tensor, got {t.dtype}")
    _require(teacher.dim() == 2, f"teacher must be [Nt, D], got shape {tuple(teacher.shape)}")
    _require(
        teacher.shape[0] >= min_rows, "teacher has no rows: pass at least one teacher embedding"
    )
    _require(
        teacher_protos.dim() == 2 and teacher_protos.shape[0] >= 1,
        f"teacher_protos must be [K, D] with K >= 1, got shape {tuple(teacher_protos.shape)}",
    )
    _require(
        teacher_protos.shape[1] == teacher.shape[1],
        f"teacher has D={teacher.shape[1]} but teacher_protos has D={teacher_protos.shape[1]}",
    )
    _require(
        center.shape == (teacher_protos.shape[0],),
        f"center must be [K]=[{teacher_protos.shape[0]}], got shape {tuple(center.shape)}",
    )
    _require(teacher_temp > 0, f"teacher_temp must be > 0, got {teacher_temp}")


def check_loss_inputs(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_protos: torch.Tensor,
    teacher_protos: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> None:
    check_teacher_inputs(teacher, teacher_protos, center, teacher_temp)
    for name, t in (("student", student), ("student_protos", student_protos), ("weights", weights)):
        _require(t.is_floating_point(), f"{name} must be a floating tensor, got {t.dtype}")
    devices = {
        t.device
        for t in (student, teacher, student_protos, teacher_protos, targets, weights, center)
    }
    _require(
        len(devices) == 1, f"all tensors must be on one device, got {sorted(map(str, devices))}"
    )
    _require(student.dim() == 2, f"student must be [Ns, D], got shape {tuple(student.shape)}")
    _require(
        student_protos.shape == teacher_protos.shape,
        f"student_protos {tuple(student_protos.shape)} and teacher_protos "
        f"{tuple(teacher_protos.shape)} must have the same [K, D] shape",
    )
    _require(
        student.shape[1] == student_protos.shape[1],
        f"student has D={student.shape[1]} but student_protos has D={student_protos.shape[1]}",
    )
    _require(
        targets.dim() == 2 and targets.shape[0] == student.shape[0],
        f"targets must be [Ns, P] with Ns={student.shape[0]}, got shape {tuple(targets.shape)}",
    )
    _require(
        targets.dtype == torch.int64, f"targets must be int64 (torch.long), got {targets.dtype}"
    )
    _require(
        weights.shape == targets.shape,
        f"weights {tuple(weights.shape)} must have the shape of targets {tuple(targets.shape)}",
    )
    if targets.numel() and check_values(targets):  # a device sync: on a GPU in debug mode only
        lo, hi = int(targets.min()), int(targets.max())
        _require(
            lo >= -1 and hi < teacher.shape[0],
            f"targets must lie in [-1, Nt-1]=[-1, {teacher.shape[0] - 1}], found [{lo}, {hi}]",
        )
    _require(student_temp > 0, f"student_temp must be > 0, got {student_temp}")
