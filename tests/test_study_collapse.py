"""The partial-collapse verdicts: decided on runs whose prototypes reached their end state.

The end-state rule: collapsed (final M / K <= 0.9), or nn p5 changed by < 10 % (relative to its
last value) over the epoch rows at or after 80 % of the last step, with at least two rows there.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastproto.study.collapse import collapse_section, p5_change, reached_end_state

STEPS = [1000 * i for i in range(1, 11)]  # epoch rows at steps 1000 .. 10000
FLAT = [0.5, 0.4, 0.3, 0.25, 0.22, 0.21, 0.205, 0.2, 0.2, 0.2]  # settled before step 8000
FALLING = [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1]  # still falling at the end


def rows(p5s: list[float], steps: list[int] = STEPS) -> list[dict[str, Any]]:
    return [
        {"step": s, "nn_distance_quantiles": {"p5": p}} for s, p in zip(steps, p5s, strict=True)
    ]


def test_a_still_falling_p5_is_not_an_end_state() -> None:
    # last 20 %: steps 8000, 9000, 10000 with p5 0.15, 0.12, 0.1 -> (0.15 - 0.1) / 0.1 = 50 %
    assert p5_change(rows(FALLING)) == pytest.approx(0.5)
    assert not reached_end_state(rows(FALLING), final_ratio=1.0)


def test_a_flat_p5_is_an_end_state_whatever_came_before() -> None:
    assert p5_change(rows(FLAT)) == pytest.approx(0.0)
    assert reached_end_state(rows(FLAT), final_ratio=1.0)


def test_a_collapsed_run_is_an_end_state_even_while_p5_falls() -> None:
    assert reached_end_state(rows(FALLING), final_ratio=0.9)
    assert reached_end_state(rows(FALLING), final_ratio=0.3)
    assert not reached_end_state(rows(FALLING), final_ratio=0.91)


def test_the_window_starts_at_80_percent_of_the_last_step_inclusive() -> None:
    # step 7000 lies before the window: a jump there does not count
    p5s = [0.5] * 7 + [0.2, 0.2, 0.2]
    assert reached_end_state(rows(p5s), 1.0)
    # step 8000 lies in it (at, not after, 80 %): the same jump there does
    p5s = [0.5] * 8 + [0.2, 0.2]
    assert p5_change(rows(p5s)) == pytest.approx(1.5)
    assert not reached_end_state(rows(p5s), 1.0)


def test_the_threshold_is_strict_and_relative_to_the_last_value() -> None:
    # a change of exactly 10 % of the last value fails (0.0625 / 0.625, exact in binary); just
    # under passes; a rise to the end counts as well as a fall
    assert not reached_end_state(rows([0.6] * 7 + [0.6875, 0.65, 0.625]), 1.0)
    assert reached_end_state(rows([0.6] * 7 + [0.6874, 0.65, 0.625]), 1.0)
    assert not reached_end_state(rows([0.6] * 7 + [0.5, 0.55, 0.625]), 1.0)


def test_a_window_with_one_row_or_no_p5_cannot_show_an_end_state() -> None:
    sparse = rows([0.5, 0.2], steps=[5000, 10000])  # 5000 < 8000: one row in the window
    assert p5_change(sparse) is None and not reached_end_state(sparse, 1.0)
    assert not reached_end_state([{"step": 10000}], 1.0) and not reached_end_state([], 1.0)
    assert reached_end_state([], 0.5)  # collapse needs no history


def test_duplicates_at_distance_zero() -> None:
    assert reached_end_state(rows([0.3] * 7 + [0.0, 0.0, 0.0]), 1.0)
    assert not reached_end_state(rows([0.3] * 8 + [0.01, 0.0]), 1.0)


def test_old_records_without_steps_use_the_epoch() -> None:
    # 10 epochs: epoch + 1 >= 8 are the last 20 %, as the steps would be
    old = [{"epoch": e, "nn_distance_quantiles": {"p5": p}} for e, p in enumerate(FALLING)]
    assert p5_change(old) == pytest.approx(0.5)
    old = [{"epoch": e, "nn_distance_quantiles": {"p5": p}} for e, p in enumerate(FLAT)]
    assert reached_end_state(old, 1.0)


def record(
    k: int, lam: float, seed: int, unique: int, p5s: list[float] = FLAT, moved: float = 0.2
) -> dict[str, Any]:
    history = [
        {"step": s, "unique_prototypes": k, "nn_distance_quantiles": {"p5": p}}
        for s, p in zip(STEPS, p5s, strict=True)
    ]
    history[-1]["unique_prototypes"] = unique
    history[-1] |= {"used_prototypes": k // 2, "effective_prototypes": k / 3}
    return {
        "run_id": f"K{k}-l{lam}-s{seed}",
        "status": "ok",
        "settings": {"koleo_lambda": lam, "seed": seed},
        "metrics": {
            "num_prototypes": k,
            "unique_prototypes": unique,
            "knn_top1": {"20": 0.7},
            "linear_top1": 0.75,
            "prototype_movement": moved,
            "nn_distance_quantiles": {"p0": 0.01, "p5": 0.1, "p50": 0.3},
            "epochs": history,
        },
    }


def verdicts(records: list[dict[str, Any]]) -> tuple[str, str]:
    lines = collapse_section(records)
    q1 = next(line for line in lines if line.startswith("- **Q1"))
    q2 = next(line for line in lines if line.startswith("- **Q2"))
    return q1, q2


def test_collapse_in_settled_baselines_is_seen_and_koleo_proto_judged() -> None:
    runs = [record(1024, 0.0, s, 300) for s in (0, 1)]
    runs += [record(256, 0.0, 0, 256), record(1024, 0.1, 0, 1024)]
    q1, q2 = verdicts(runs)
    assert "SEEN" in q1 and "NOT SEEN" not in q1 and "K = [1024]" in q1
    assert q2.endswith("PREVENTS**")
    q1, q2 = verdicts([*runs[:3], record(1024, 0.1, 0, 500)])
    assert q2.endswith("DOES NOT PREVENT**")
    # a KoLeo-proto run still on its way cannot show that it prevents the collapse
    q1, q2 = verdicts([*runs[:3], record(1024, 0.1, 0, 1024, FALLING)])
    assert q2.endswith("NOT DECIDED**")


def test_runs_still_on_their_way_decide_nothing_however_far_they_moved() -> None:
    moving = [record(k, 0.0, 0, k, FALLING, moved=0.5) for k in (256, 1024)]
    q1, q2 = verdicts(moving)
    assert "NOT DECIDED" in q1 and "NOTHING TO PREVENT" in q2
    text = "\n".join(collapse_section(moving))
    assert "0 of 2 finished runs are informative" in text
    # ... and runs that barely moved but settled do count
    q1, _ = verdicts([record(k, 0.0, 0, k, FLAT, moved=0.01) for k in (256, 4096)])
    assert "NOT SEEN" in q1


def test_all_prototypes_kept_in_settled_runs_at_two_k_is_not_seen() -> None:
    q1, _ = verdicts([record(k, 0.0, 0, k) for k in (256, 4096)])
    assert "NOT SEEN" in q1
    q1, _ = verdicts([record(256, 0.0, 0, 256)])  # one K is not enough
    assert "NOT DECIDED" in q1


def test_the_table_shows_moved_the_p5_change_and_the_used_prototypes() -> None:
    lines = collapse_section([record(256, 0.0, 0, 256, FALLING, moved=0.321)])
    header = next(line for line in lines if line.startswith("| run |"))
    assert "moved" in header and "used" in header and "effective" in header
    row = next(line for line in lines if line.startswith("| K256"))
    assert "| 0.321 | 50.0 % | NO |" in row and "| 128 | 85.3 |" in row


def test_the_knn_table_compares_the_baseline_with_koleo_proto_0_1_only() -> None:
    runs = [record(1024, 0.0, 0, 300), record(1024, 0.1, 0, 1024)]
    other = record(1024, 0.5, 0, 1024)
    other["metrics"]["knn_top1"] = {"20": 0.5}  # a weight of the lambda table, not this one
    lines = collapse_section([*runs, other])
    row = next(line for line in lines if line.startswith("| 1024 |"))
    assert row.split("|")[3].strip() == "70.00 (range 0.00, n 1)"


def test_records_without_history_or_usage_still_report() -> None:
    old = record(256, 0.0, 0, 256)
    old["metrics"]["epochs"] = [{"epoch": 0, "unique_prototypes": 256}]
    del old["metrics"]["prototype_movement"]
    row = next(line for line in collapse_section([old]) if line.startswith("| K256"))
    assert "| - | - | NO |" in row and "| - | - | 70.0 |" in row


def test_the_rules_are_printed_with_their_thresholds() -> None:
    text = "\n".join(collapse_section([record(256, 0.0, 0, 256)]))
    rules = text.split("- Q1")[0]
    assert "M / K <= 0.9" in rules and "at or\n  after 80 % of the last step" in rules
    assert "is < 10 %" in rules and "last 20 % of the run" in rules
    assert "_PCT" not in text and "RATIO" not in text
    assert text.index("- informative:") < text.index("**Q1")  # rules before results
