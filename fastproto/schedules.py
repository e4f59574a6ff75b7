"""Training schedules as functions of the global step, so a resumed run needs only the step.

CosineSchedule (linear warm-up, then half a cosine), for step s, warm-up W, total T:

    s < W:       warmup_start + (start - warmup_start) * s / W
    W <= s < T:  end + (start - end) * (1 + cos(pi * (s - W) / (T - W))) / 2
    s >= T:      end

so the value is `start` at s = W and reaches `end` at s = T, one past the last step (as in
DINO's cosine scheduler, the last step T - 1 sits just short of `end`).

LinearWarmup: start + (end - start) * s / W for s < W, then `end`.

The recipes of DINO and the DINO-vMF paper (section 5.1.1) as factories:
learning rate 0 -> base over the warm-up then cosine to min_lr; weight decay cosine
0.04 -> 0.4; teacher temperature linear 0.04 -> 0.07 over its warm-up, then constant;
teacher EMA momentum cosine 0.996 -> 1.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass


def _check_step(step: int) -> int:
    """The step as a Python int (numpy and 0-d integer tensors accepted); ValueError if < 0."""
    try:
        value = operator.index(step)
    except TypeError:
        raise ValueError(f"step must be an integer >= 0, got {step!r}") from None
    if isinstance(step, bool) or value < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    return value


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warm-up from warmup_start to start over warmup_steps, then cosine to end."""

    start: float
    end: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        _check_finite(start=self.start, end=self.end, warmup_start=self.warmup_start)
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps must lie in [0, total_steps = {self.total_steps}), "
                f"got {self.warmup_steps}; shorten the warm-up or lengthen the run"
            )

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        if step < self.warmup_steps:
            return self.warmup_start + (self.start - self.warmup_start) * step / self.warmup_steps
        if step >= self.total_steps:
            return self.end
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LinearWarmup:
    """Linear from start to end over warmup_steps, then constant at end."""

    start: float
    end: float
    warmup_steps: int

    def __post_init__(self) -> None:
        _check_finite(start=self.start, end=self.end)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        if step >= self.warmup_steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.warmup_steps


def learning_rate_schedule(
    base_lr: float, min_lr: float, total_steps: int, warmup_steps: int
) -> CosineSchedule:
    """Learning rate: 0 -> base_lr linearly over warmup_steps, then cosine to min_lr."""
    return CosineSchedule(base_lr, min_lr, total_steps, warmup_steps, warmup_start=0.0)


def weight_decay_schedule(
    total_steps: int, start: float = 0.04, end: float = 0.4
) -> CosineSchedule:
    """Weight decay: cosine from 0.04 to 0.4 over the run."""
    return CosineSchedule(start, end, total_steps)


def teacher_temperature_schedule(
    warmup_steps: int, start: float = 0.04, end: float = 0.07
) -> LinearWarmup:
    """Teacher temperature: 0.04 -> 0.07 linearly over warmup_steps, then constant."""
    return LinearWarmup(start, end, warmup_steps)


def ema_momentum_schedule(
    total_steps: int, start: float = 0.996, end: float = 1.0
) -> CosineSchedule:
    """Teacher EMA momentum: cosine from 0.996 to 1 over the run."""
    return CosineSchedule(start, end, total_steps)
