"""The epoch history a run record keeps: prototype health per epoch and the decay clock there.

The clock of an epoch row is the prototype_decay_clock of the step row with the same step, or
of the nearest step row before it; metrics files from before the clock was logged give none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastproto.study.evaluate import clock_at, clock_table, health_history


def step_row(step: int, clock: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "step", "step": step, "loss": 1.0, "lr": 0.1}
    if clock is not None:
        row |= {"prototype_decay_clock": clock, "prototype_weight_decay": 0.8}
    return row


def epoch_row(step: int, epoch: int, unique: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "epoch",
        "step": step,
        "epoch": epoch,
        "unique_prototypes": unique,
        "num_prototypes": 64,
        "largest_duplicate_set": 1 + 64 - unique,
        "redundancy_histogram": [0, unique],
        "prototype_movement": 0.1 * (epoch + 1),
        "nn_distance_quantiles": {"p0": 0.1, "p5": 0.2 - 0.01 * epoch, "p50": 0.4},
        "nn_distance_below_eps": 0.0,
        **extra,
    }


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_clock_lookup_same_step_or_nearest_before() -> None:
    table = clock_table([step_row(s, 0.01 * s) for s in (1, 2, 3, 5, 8)] + [step_row(9, None)])
    assert table == [(1, 0.01), (2, 0.02), (3, 0.03), (5, 0.05), (8, 0.08)]
    assert clock_at(table, 5) == pytest.approx(0.05)  # the same step
    assert clock_at(table, 7) == pytest.approx(0.05)  # no row at 6, 7: the one at 5
    assert clock_at(table, 100) == pytest.approx(0.08)
    assert clock_at(table, 0) is None and clock_at(table, None) is None
    assert clock_at([], 5) is None


def test_a_resumed_run_keeps_the_later_row_of_a_repeated_step() -> None:
    rows = [step_row(1, 0.1), step_row(2, 0.2), step_row(2, 0.25), step_row(3, 0.3)]
    assert clock_at(clock_table(rows), 2) == pytest.approx(0.25)


def test_history_per_epoch_with_clock_usage_and_the_final_clock(tmp_path: Path) -> None:
    rows = [step_row(s, 0.004 * s) for s in range(1, 10)]
    rows.insert(4, epoch_row(4, 0, 64, used_prototypes=40, effective_prototypes=50.5))
    rows.append(epoch_row(10, 1, 60, used_prototypes=30, effective_prototypes=20.25))
    found = health_history(write(tmp_path / "run", rows), final_step=9)
    first, second = found["epochs"]
    assert first["prototype_decay_clock"] == pytest.approx(0.016)  # step row 4
    assert second["prototype_decay_clock"] == pytest.approx(0.036)  # no row 10: the one at 9
    assert (second["step"], second["unique_prototypes"], second["num_prototypes"]) == (10, 60, 64)
    assert second["nn_distance_quantiles"]["p5"] == pytest.approx(0.19)
    assert (second["used_prototypes"], second["effective_prototypes"]) == (30, 20.25)
    assert "redundancy_histogram" not in second  # K numbers per epoch are not kept
    assert found["prototype_decay_clock"] == pytest.approx(0.036)
    assert (found["used_prototypes"], found["effective_prototypes"]) == (30, 20.25)
    assert found["prototype_movement"] == pytest.approx(0.2)


def test_metrics_from_before_the_clock_give_a_history_without_it(tmp_path: Path) -> None:
    rows = [step_row(1, None), epoch_row(1, 0, 64), step_row(2, None), epoch_row(2, 1, 63)]
    found = health_history(write(tmp_path / "old", rows), final_step=2)
    assert [e["unique_prototypes"] for e in found["epochs"]] == [64, 63]
    assert all("prototype_decay_clock" not in e for e in found["epochs"])
    assert found["prototype_decay_clock"] is None and found["used_prototypes"] is None
    assert health_history(tmp_path / "missing")["epochs"] == []
