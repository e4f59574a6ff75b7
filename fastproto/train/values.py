"""Per-step schedule values from the config, via fastproto.schedules (functions of the step).

lr       0 -> optim.lr * batch_size / 1024 over warmup_epochs, cosine to min_lr
wd       cosine weight_decay -> weight_decay_end over the run
wd_W     the prototype matrices' decay: wd, or its own cosine prototype_weight_decay -> _end
clock    sum over the steps so far of lr * wd_W: AdamW's decoupled decay alone multiplies W by
         prod (1 - lr * wd_W) ~ exp(-clock), so it is the decay W has received, on one axis for
         runs of any length and schedule
tau_t    warmup_teacher_temp -> teacher_temp linearly over teacher_temp_warmup_epochs
m        cosine momentum_teacher -> momentum_teacher_end over the run
frozen   the last head layer gets no update for the first freeze_last_layer_epochs
"""

from __future__ import annotations

from collections.abc import Callable

from fastproto import schedules
from fastproto.config import FOLLOW_NETWORK, TrainConfig
from fastproto.train.step import StepValues


def scaled_lr(config: TrainConfig) -> float:
    """The linear scaling rule: optim.lr is per 1024 images of global batch."""
    return config.optim.lr * config.optim.batch_size / 1024


def prototype_decay_mode(config: TrainConfig) -> str:
    """Which AdamW group the prototype matrices join: "network" (they follow its schedule),
    "none" (a schedule of 0: the undecayed group; also with head.prototypes = "em", whose W
    takes no optimizer step) or "own" (a group with their schedule)."""
    o = config.optim
    if config.head.prototypes == "em":
        return "none"
    if o.prototype_weight_decay == FOLLOW_NETWORK:
        return "network"
    if o.prototype_weight_decay == 0 and o.prototype_weight_decay_end == 0:
        return "none"
    return "own"


class _Schedules:
    """The run's schedules, built once per (config, steps per epoch)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        o, m = config.optim, config.method
        total = max(o.epochs * steps_per_epoch, 1)
        warmup = min(o.warmup_epochs * steps_per_epoch, total - 1)  # a warm-up shorter than the run
        self.lr = schedules.learning_rate_schedule(scaled_lr(config), o.min_lr, total, warmup)
        self.wd = schedules.weight_decay_schedule(total, o.weight_decay, o.weight_decay_end)
        self.wd_prototypes: Callable[[int], float] = self.wd
        mode = prototype_decay_mode(config)
        if mode == "none":
            self.wd_prototypes = schedules.weight_decay_schedule(total, 0.0, 0.0)
        elif mode == "own":
            self.wd_prototypes = schedules.weight_decay_schedule(
                total, o.prototype_weight_decay, o.prototype_weight_decay_end
            )
        self.temp = schedules.teacher_temperature_schedule(
            m.teacher_temp_warmup_epochs * steps_per_epoch, m.warmup_teacher_temp, m.teacher_temp
        )
        self.momentum = schedules.ema_momentum_schedule(
            total, o.momentum_teacher, o.momentum_teacher_end
        )
        self.frozen_steps = o.freeze_last_layer_epochs * steps_per_epoch
        self._clock = (-1, 0.0)  # (last step summed, sum of lr * wd_W over steps 0..it)

    def clock(self, step: int) -> float:
        """sum over s <= step of lr(s) * wd_W(s), always added in step order from 0 (so a
        resumed run reads the same bits as an uninterrupted one)."""
        last, total = self._clock if self._clock[0] <= step else (-1, 0.0)
        for s in range(last + 1, step + 1):
            total += self.lr(s) * self.wd_prototypes(s)
        self._clock = (step, total)
        return total


_CACHE: dict[tuple[str, int], _Schedules] = {}


def _schedules(config: TrainConfig, steps_per_epoch: int) -> _Schedules:
    key = (repr(config.optim) + repr(config.method) + repr(config.head), steps_per_epoch)
    if key not in _CACHE:
        _CACHE.clear()  # one run at a time per process
        _CACHE[key] = _Schedules(config, steps_per_epoch)
    return _CACHE[key]


def step_values(config: TrainConfig, step: int, steps_per_epoch: int) -> StepValues:
    """Schedule values at global `step` of a run with `steps_per_epoch` steps per epoch."""
    s = _schedules(config, steps_per_epoch)
    return StepValues(
        lr=s.lr(step),
        weight_decay=s.wd(step),
        prototype_weight_decay=s.wd_prototypes(step),
        prototype_decay_clock=s.clock(step),
        teacher_temp=s.temp(step),
        momentum=s.momentum(step),
        freeze_last_layer=step < s.frozen_steps,
    )
