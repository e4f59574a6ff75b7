"""Q3 on the EM arm's confirmation runs: the trend rule (neither M nor nn p5 falling at the
end) and the verdict it gives, on records whose histories are written out here."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fastproto.study.confirm import (
    confirmation_lines,
    confirmation_runs,
    fitted_change,
    question_three_confirmed,
    reached_end_state,
    trends,
)

STEPS = [1000.0 * i for i in range(1, 11)]  # the window (last 20 %) holds steps 8000-10000


def rows(p5s: list[float], ms: list[int], k: int = 1000) -> list[dict[str, Any]]:
    return [
        {"step": s, "unique_prototypes": m, "num_prototypes": k, "nn_distance_quantiles": {"p5": p}}
        for s, p, m in zip(STEPS, p5s, ms, strict=True)
    ]


def record(name: str, k: int, p5s: list[float], ms: list[int], group: str) -> dict[str, Any]:
    return {
        "run_id": name,
        "groups": [group],
        "status": "ok",
        "settings": {"seed": int(name[-1])},
        "metrics": {"num_prototypes": k, "unique_prototypes": ms[-1], "epochs": rows(p5s, ms, k)},
    }


def test_fitted_change_is_the_least_squares_rise() -> None:
    assert fitted_change([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx(4.0)
    # a wobble around a flat line: the fit sees no rise although the ends differ
    assert fitted_change([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 1.0, 2.0]) == pytest.approx(0.6)
    assert fitted_change([5.0], [1.0]) == 0.0


def test_falling_p5_or_falling_m_is_not_an_end_state() -> None:
    flat_m = [990] * 10
    settled = [0.3] * 10
    falling = [0.3] * 7 + [0.28, 0.25, 0.22]  # window 0.28 -> 0.22: fit -24 % of its mean
    rising_wobble = [0.1] * 7 + [0.09, 0.15, 0.12]  # up and down, rising on the fit
    assert reached_end_state(rows(settled, flat_m), 0.99, 1000)
    assert not reached_end_state(rows(falling, flat_m), 0.99, 1000)
    assert reached_end_state(rows(rising_wobble, flat_m), 0.99, 1000)
    losing = [990] * 7 + [985, 980, 975]  # -10 of K = 1000 across the window: -1.0 %
    assert not reached_end_state(rows(settled, losing), 0.975, 1000)
    slight = [990] * 7 + [990, 989, 988]  # -0.2 % of K: within M_TREND
    assert reached_end_state(rows(settled, slight), 0.988, 1000)
    # collapsed is an end state whatever the trends
    assert reached_end_state(rows(falling, [50] * 10), 0.05, 1000)
    p5, m = trends(rows(falling, losing), 1000) or (math.nan, math.nan)
    assert p5 == pytest.approx(-0.06 / 0.25) and m == pytest.approx(-0.01)
    # p5 at 0 throughout (duplicates): flat, so M decides
    assert reached_end_state(rows([0.0] * 10, flat_m), 0.99, 1000)


def test_the_verdict_counts_confirmation_runs_that_reached_their_end_state_only() -> None:
    flat_m, settled = [990] * 10, [0.3] * 10
    falling = [0.3] * 7 + [0.28, 0.25, 0.22]
    records = [
        record("c-s2", 1000, settled, flat_m, "em_long_confirm"),
        record("c-s3", 1000, falling, flat_m, "em_long_confirm"),  # not ended: left out
        record("o-s0", 1000, settled, [100] * 10, "em_long"),  # not a confirmation run
    ]
    runs = confirmation_runs(records)
    assert [r["run_id"] for r in runs] == ["c-s2", "c-s3"]
    assert [r["end_state"] for r in runs] == [True, False]
    assert question_three_confirmed(runs, [1000]) == "PREVENTS"
    assert question_three_confirmed(runs, []) == "NOT DECIDED"
    low = [record("l-s2", 1000, settled, [900] * 9 + [920], "em_confirm")]
    assert question_three_confirmed(confirmation_runs(low), [1000]) == "DOES NOT PREVENT"
    none_ended = [record("n-s2", 1000, falling, flat_m, "em_confirm")]
    assert question_three_confirmed(confirmation_runs(none_ended), [1000]) == "NOT DECIDED"
    text = "\n".join(confirmation_lines(records, [1000]))
    assert "Q3 on the confirmation runs (K = [1000]): PREVENTS" in text
    assert "| c-s3 | 1000 | 3 | 10000 | 0.990 | -24.0 % | +0.00 % | NO |" in text
    assert "P5_TREND" not in text and "at\n  least -10 % of its mean" in text
    assert "(the groups em_long_confirm, em_confirm)" in text
    assert "- K = 1000: 1 of 2 runs reached their end state, mean M / K 0.990: prevents" in text
    text = "\n".join(confirmation_lines(low + none_ended, [1000]))
    assert "- K = 1000: 1 of 2 runs reached their end state, mean M / K 0.920: does not" in text
