"""Per-step schedule values from the config, via fastproto.schedules (functions of the step).

lr       0 -> optim.lr * batch_size / 1024 over warmup_epochs, cosine to min_lr
wd       cosine weight_decay -> weight_decay_end over the run
tau_t    warmup_teacher_temp -> teacher_temp linearly over teacher_temp_warmup_epochs
m        cosine momentum_teacher -> momentum_teacher_end over the run
frozen   the last head layer gets no update for the first freeze_last_layer_epochs
"""

from __future__ import annotations

from fastproto import schedules
from fastproto.config import TrainConfig
from fastproto.train.step import StepValues


def scaled_lr(config: TrainConfig) -> float:
    """The linear scaling rule: optim.lr is per 1024 images of global batch."""
    return config.optim.lr * config.optim.batch_size / 1024


def step_values(config: TrainConfig, step: int, steps_per_epoch: int) -> StepValues:
    """Schedule values at global `step` of a run with `steps_per_epoch` steps per epoch."""
    o, m = config.optim, config.method
    total = max(o.epochs * steps_per_epoch, 1)
    warmup = min(o.warmup_epochs * steps_per_epoch, total - 1)  # a warm-up shorter than the run
    lr = schedules.learning_rate_schedule(scaled_lr(config), o.min_lr, total, warmup)
    wd = schedules.weight_decay_schedule(total, o.weight_decay, o.weight_decay_end)
    temp = schedules.teacher_temperature_schedule(
        m.teacher_temp_warmup_epochs * steps_per_epoch, m.warmup_teacher_temp, m.teacher_temp
    )
    momentum = schedules.ema_momentum_schedule(total, o.momentum_teacher, o.momentum_teacher_end)
    return StepValues(
        lr=lr(step),
        weight_decay=wd(step),
        teacher_temp=temp(step),
        momentum=momentum(step),
        freeze_last_layer=step < o.freeze_last_layer_epochs * steps_per_epoch,
    )
