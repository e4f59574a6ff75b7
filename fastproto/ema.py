"""Teacher update as an exponential moving average of the student.

For every pair of matching parameters (same name, shape and dtype):

    teacher <- m * teacher + (1 - m) * student

done in place with fused multi-tensor ops (torch._foreach_lerp_, which computes
teacher + (1 - m) (student - teacher) and is exact at m = 0 and m = 1). Buffers (e.g. batch-norm
statistics) are copied from the student, not averaged.
"""

from __future__ import annotations

import torch
from torch import nn


def _pair_up(
    teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], kind: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Match tensors by name -> (teacher list, student list); ValueError on any mismatch."""
    if teacher.keys() != student.keys():
        missing = sorted(student.keys() - teacher.keys())[:5]
        extra = sorted(teacher.keys() - student.keys())[:5]
        raise ValueError(
            f"teacher and student {kind} do not match (missing in teacher: {missing}, extra in "
            f"teacher: {extra}); build the teacher as a copy of the unwrapped student"
        )
    for name, t in teacher.items():
        s = student[name]
        if t.shape != s.shape or t.dtype != s.dtype:
            raise ValueError(
                f"{kind[:-1]} {name!r}: teacher {tuple(t.shape)} {t.dtype} vs student "
                f"{tuple(s.shape)} {s.dtype}; they must have the same shape and dtype"
            )
    names = list(teacher)
    return [teacher[n] for n in names], [student[n] for n in names]


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: teacher params <- momentum * teacher + (1 - momentum) * student; copy buffers."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    t_params, s_params = _pair_up(
        dict(teacher.named_parameters()), dict(student.named_parameters()), "parameters"
    )
    t_bufs, s_bufs = _pair_up(
        dict(teacher.named_buffers()), dict(student.named_buffers()), "buffers"
    )
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
    for t, s in zip(t_bufs, s_bufs, strict=True):
        t.copy_(s)
