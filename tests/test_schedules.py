"""Schedules against their closed forms at the landmark steps, and their monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastproto.schedules import (
    CosineSchedule,
    LinearWarmup,
    ema_momentum_schedule,
    learning_rate_schedule,
    teacher_temperature_schedule,
    weight_decay_schedule,
)


def test_learning_rate_landmarks() -> None:
    lr = learning_rate_schedule(base_lr=5e-4, min_lr=1e-6, total_steps=1000, warmup_steps=100)
    assert lr(0) == 0.0
    assert lr(50) == pytest.approx(2.5e-4)
    assert lr(100) == pytest.approx(5e-4)
    # Halfway through the cosine phase the value is the midpoint of base and min.
    assert lr(550) == pytest.approx((5e-4 + 1e-6) / 2)
    last = 1e-6 + (5e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 899 / 900))
    assert lr(999) == pytest.approx(last, rel=1e-12)
    assert lr(1000) == 1e-6 and lr(5000) == 1e-6


def test_learning_rate_rises_then_falls() -> None:
    lr = learning_rate_schedule(1.0, 0.1, total_steps=300, warmup_steps=30)
    values = [lr(s) for s in range(301)]
    assert all(a < b for a, b in zip(values[:30], values[1:31], strict=True))
    assert all(a >= b for a, b in zip(values[30:], values[31:], strict=False))


def test_weight_decay_cosine_from_004_to_04() -> None:
    wd = weight_decay_schedule(total_steps=200)
    assert wd(0) == pytest.approx(0.04)
    assert wd(100) == pytest.approx(0.22)
    assert wd(199) == pytest.approx(0.4 - 0.36 * 0.5 * (1 + math.cos(math.pi * 199 / 200)))
    values = [wd(s) for s in range(201)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_teacher_temperature_warmup_then_constant() -> None:
    temp = teacher_temperature_schedule(warmup_steps=30)
    assert temp(0) == pytest.approx(0.04)
    assert temp(15) == pytest.approx(0.055)
    assert temp(30) == pytest.approx(0.07)
    assert temp(10_000) == pytest.approx(0.07)
    values = [temp(s) for s in range(40)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_ema_momentum_cosine_to_one() -> None:
    mom = ema_momentum_schedule(total_steps=400)
    assert mom(0) == pytest.approx(0.996)
    assert mom(200) == pytest.approx(0.998)
    assert mom(399) == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi * 399 / 400)))
    assert mom(400) == 1.0
    values = [mom(s) for s in range(401)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_custom_warmup_start_and_no_warmup() -> None:
    s = CosineSchedule(start=1.0, end=0.0, total_steps=10, warmup_steps=4, warmup_start=0.2)
    assert s(0) == pytest.approx(0.2) and s(2) == pytest.approx(0.6) and s(4) == 1.0
    assert CosineSchedule(2.0, 1.0, total_steps=10)(0) == 2.0
    assert LinearWarmup(1.0, 3.0, warmup_steps=0)(0) == 3.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        CosineSchedule(1.0, 0.0, total_steps=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineSchedule(1.0, 0.0, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearWarmup(0.04, 0.07, warmup_steps=-1)
    with pytest.raises(ValueError, match="finite"):
        CosineSchedule(float("nan"), 0.0, total_steps=10)
    with pytest.raises(ValueError, match="step"):
        CosineSchedule(1.0, 0.0, total_steps=10)(-1)
    with pytest.raises(ValueError, match="step"):
        LinearWarmup(0.0, 1.0, warmup_steps=10)(2.5)  # type: ignore[arg-type]


def test_integer_like_steps_are_accepted() -> None:
    s = CosineSchedule(1.0, 0.0, total_steps=10)
    assert s(np.int64(5)) == s(5) == s(torch.tensor(5))  # type: ignore[arg-type]


def test_prototype_decay_clock_sums_lr_times_decay_and_resumes_to_the_same_bits() -> None:
    from fastproto.config import TrainConfig
    from fastproto.train import values as step_schedules

    config = TrainConfig()
    config.optim.epochs, config.optim.warmup_epochs = 4, 1
    config.optim.prototype_weight_decay, config.optim.prototype_weight_decay_end = 0.5, 2.0
    rows = [step_schedules.step_values(config, s, 25) for s in range(100)]
    expected = np.cumsum([r.lr * r.prototype_weight_decay for r in rows])
    np.testing.assert_allclose([r.prototype_decay_clock for r in rows], expected, rtol=1e-12)
    assert rows[-1].prototype_weight_decay == pytest.approx(2.0, rel=1e-3)
    assert rows[-1].weight_decay == pytest.approx(0.4, rel=1e-3)  # the network's schedule
    step_schedules._CACHE.clear()  # a resumed process starts with no running sum
    assert step_schedules.step_values(config, 60, 25) == rows[60]
    config.optim.prototype_weight_decay = config.optim.prototype_weight_decay_end = -1.0
    follows = [step_schedules.step_values(config, s, 25) for s in range(100)]
    assert all(r.prototype_weight_decay == r.weight_decay for r in follows)


def test_em_prototypes_receive_no_decay_and_their_clock_stays_at_zero() -> None:
    from fastproto.config import TrainConfig
    from fastproto.train import values as step_schedules

    config = TrainConfig()
    config.optim.epochs, config.optim.warmup_epochs = 4, 1
    config.head.prototypes = "em"
    row = step_schedules.step_values(config, 80, 25)
    assert row.prototype_weight_decay == 0.0 and row.prototype_decay_clock == 0.0
    assert row.weight_decay > 0.0  # the network still decays
