"""The EM arm of the collapse study: which runs form it, and its two verdicts.

Q3 (EM prevents the collapse) decides on informative EM runs at the K values where the gradient
arm collapsed; Q4 compares EM's mean kNN with the gradient arm's beyond the seed spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastproto.study.em_arm import (
    ARMS,
    arm_runs,
    choices_table,
    em_arm_section,
    em_choices,
    question_four,
    question_three,
)

STEPS = [1000 * i for i in range(1, 11)]
FLAT = [0.3] * 10  # p5 settled: informative
FALLING = [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1]  # not settled


def record(
    name: str,
    k: int,
    unique: int,
    knn: float,
    *,
    seed: int = 0,
    lam: float = 0.0,
    em: dict[str, Any] | None = None,
    p5s: list[float] = FLAT,
    centering: str = "probability",
    epochs: int = 40,
    teacher_temp: float = 0.04,
) -> dict[str, Any]:
    head: dict[str, Any] = {"num_prototypes": k}
    if em is not None:
        head |= {"prototypes": "em", "em_concentration": "fixed", **em}
    rows = [
        {
            "step": s,
            "unique_prototypes": unique,
            "num_prototypes": k,
            "nn_distance_quantiles": {"p5": p},
        }
        for s, p in zip(STEPS, p5s, strict=True)
    ]
    return {
        "run_id": name,
        "status": "ok",
        "settings": {"seed": seed},
        "config": {
            "head": head,
            "method": {"koleo_proto": lam, "centering": centering, "teacher_temp": teacher_temp},
            "optim": {"epochs": epochs},
        },
        "metrics": {
            "num_prototypes": k,
            "unique_prototypes": unique,
            "knn_top1": {"20": knn},
            "linear_top1": knn,
            "nn_distance_quantiles": {"p5": p5s[-1]},
            "epochs": rows,
        },
    }


def test_the_em_arm_holds_the_default_choices_only() -> None:
    default = record("em", 100, 99, 0.7, em={})
    assert em_choices(default) == []
    assert em_choices(record("f", 100, 99, 0.7, em={"em_forgetting": 0.9})) == ["forgetting 0.9"]
    assert em_choices(record("n", 100, 99, 0.7, em={}, centering="none")) == ["centring none"]
    old = record("o", 100, 99, 0.7, em={})
    del old["config"]["head"]["em_concentration"]  # records from before the key: kappa fitted
    assert em_choices(old) == ["kappa fitted"]
    gradient = [record("g", 100, 10, 0.7), record("kp", 100, 100, 0.7, lam=0.1)]
    arms = arm_runs(gradient, [*gradient, default, old])
    assert [r["run_id"] for r in arms[ARMS[2]]] == ["em"]
    assert [r["run_id"] for r in arms[ARMS[0]]] == ["g"]
    assert [r["run_id"] for r in arms[ARMS[1]]] == ["kp"]


def test_another_teacher_temperature_is_a_choice_of_its_own() -> None:
    """EM and gradient runs at a teacher temperature other than most runs' stay out of the
    arms and are listed with the temperature as their change."""
    base = [record("g", 100, 10, 0.7), record("g2", 100, 12, 0.7, seed=1)]
    usual = record("e0", 100, 97, 0.7, em={})
    hot_em = record("e1", 100, 99, 0.7, em={}, teacher_temp=0.02)
    hot_gradient = record("g3", 100, 50, 0.7, teacher_temp=0.02)
    records = [*base, usual, hot_em, hot_gradient]
    arms = arm_runs(base, records)
    assert [r["run_id"] for r in arms[ARMS[2]]] == ["e0"]
    assert not any(r["run_id"] == "g3" for runs in arms.values() for r in runs)
    assert em_choices(hot_em, 0.04) == ["teacher temp 0.02"] and em_choices(hot_em) == []
    text = "\n".join(choices_table(records))
    assert "| e1 | - | 100 | 0 | teacher temp 0.02 |" in text
    assert "| g3 | - | 100 | 0 | gradient, teacher temp 0.02 |" in text
    assert "| e0 |" not in text and "| g2 |" not in text


def arms_with(em_runs: list[dict[str, Any]], base: list[dict[str, Any]] | None = None) -> dict:
    base = base or [record("g", 100, 10, 0.70)]
    return arm_runs(base, [*base, *em_runs])


def test_q3_needs_informative_em_runs_that_keep_their_prototypes() -> None:
    kept = arms_with([record("em", 100, 97, 0.7, em={})])
    assert question_three(kept, [100]) == "PREVENTS"
    lost = arms_with([record("em", 100, 80, 0.7, em={}, p5s=FALLING)])  # collapsed: informative
    assert question_three(lost, [100]) == "DOES NOT PREVENT"
    drifting = arms_with([record("em", 100, 99, 0.7, em={}, p5s=FALLING)])
    assert question_three(drifting, [100]) == "NOT DECIDED"
    elsewhere = arms_with([record("em", 200, 200, 0.7, em={})])
    assert question_three(elsewhere, [100]) == "NOT DECIDED"
    assert question_three(kept, []) == "NOTHING TO PREVENT"


@pytest.mark.parametrize(
    ("em_knn", "verdict"),
    [
        ((0.74, 0.76), "BETTER"),  # mean +5 points against spreads of 2 and 2
        ((0.64, 0.66), "WORSE"),
        ((0.69, 0.72), "NO DIFFERENCE BEYOND THE SEED SPREAD"),  # +0.5 within a spread of 3
    ],
)
def test_q4_counts_a_knn_difference_only_beyond_the_seed_spread(
    em_knn: tuple[float, float], verdict: str
) -> None:
    base = [record("g0", 100, 10, 0.69, seed=0), record("g1", 100, 10, 0.71, seed=1)]
    em = [record(f"e{i}", 100, 99, v, em={}, seed=i) for i, v in enumerate(em_knn)]
    assert question_four(arms_with(em, base)) == verdict


def test_q4_with_one_seed_needs_a_point_and_says_where_verdicts_differ() -> None:
    base = [record("g", 100, 10, 0.700), record("g2", 200, 10, 0.700)]
    em = [record("e", 100, 99, 0.709, em={}), record("e2", 200, 199, 0.72, em={})]
    assert question_four(arms_with(em, base)) == (
        "MIXED: better at K = 200; no difference beyond the seed spread at K = 100"
    )


def test_section_writes_the_rules_with_their_numbers_and_draws_the_figure(tmp_path: Path) -> None:
    base = [record("g", 100, 10, 0.70)]
    em = [record("em", 100, 97, 0.70, em={}), record("f", 100, 99, 0.7, em={"em_forgetting": 0.9})]
    em[1]["commit"] = "0123456789abcdef"
    lines = em_arm_section(base, [*base, *em], tmp_path)
    text = "\n".join(lines)
    assert "PREVENT_RATIO" not in text and "SPREAD_FLOOR" not in text and ">=\n  0.95" in text
    q3 = "**Q3, decoupled EM prevents the collapse: PREVENTS** (where the gradient arm collapsed"
    assert f"{q3}: K = [100])" in text
    assert "| f | 0123456 | 100 | 0 | forgetting 0.9 |" in text
    assert (tmp_path / "em_arm.png").stat().st_size > 0
    assert "No finished run" in em_arm_section(base, base, tmp_path)[2]


def test_a_longer_em_run_is_an_arm_of_its_own_that_q3_counts_and_q4_does_not() -> None:
    drifting = record("em", 100, 99, 0.70, em={}, p5s=FALLING)  # the recipe's length
    longer = record("long", 100, 98, 0.80, em={}, epochs=80)  # settled
    arms = arms_with([drifting, longer])
    assert [r["run_id"] for r in arms["EM, 80 epochs"]] == ["long"]
    assert [r["run_id"] for r in arms[ARMS[2]]] == ["em"]
    assert question_three(arms, [100]) == "PREVENTS"  # decided by the settled longer run
    assert question_three(arms_with([drifting]), [100]) == "NOT DECIDED"
    # 10 points better, but only the longer run: no comparison of equal lengths beyond 0
    assert question_four(arms) == "NO DIFFERENCE BEYOND THE SEED SPREAD"


def test_the_decay_ablation_compares_runs_of_one_length() -> None:
    from fastproto.study.mechanism import ablation_runs

    gradient = record("g", 100, 10, 0.7)
    gradient["config"]["optim"] |= {"weight_decay": 0.8, "weight_decay_end": 0.8}
    em = record("em", 100, 99, 0.7, em={})
    em["config"]["optim"] |= {"weight_decay": 0.8, "weight_decay_end": 0.8}
    longer = record("long", 100, 98, 0.7, em={}, epochs=80)
    longer["config"]["optim"] |= {"weight_decay": 0.8, "weight_decay_end": 0.8}
    picked = [r["run_id"] for r, _ in ablation_runs([gradient, em, longer])]
    assert sorted(picked) == ["em", "g"]


def test_a_longer_gradient_run_is_the_longer_em_runs_comparison() -> None:
    base = [record("g", 100, 10, 0.70)]
    longer_base = [record("gl", 100, 10, 0.70, epochs=80)]
    em = [record("e", 100, 99, 0.70, em={}), record("el", 100, 99, 0.80, em={}, epochs=80)]
    arms = arm_runs(base, [*base, *longer_base, *em])
    assert [r["run_id"] for r in arms["gradient, 80 epochs"]] == ["gl"]
    assert [r["run_id"] for r in arms[ARMS[0]]] == ["g"]  # lengths are not pooled
    assert question_four(arms) == (
        "MIXED: better at K = 100, 80 epochs; no difference beyond the seed spread at K = 100"
    )
