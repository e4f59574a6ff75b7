"""The partial-collapse verdicts: decided on runs whose prototypes moved, by the fixed rules."""

from __future__ import annotations

from typing import Any

from fastproto.study.collapse import collapse_section


def record(k: int, lam: float, seed: int, unique: int, moved: float) -> dict[str, Any]:
    return {
        "run_id": f"K{k}-l{lam}-s{seed}", "status": "ok",
        "settings": {"koleo_lambda": lam, "seed": seed},
        "metrics": {
            "num_prototypes": k, "unique_prototypes": unique, "knn_top1": {"20": 0.7},
            "linear_top1": 0.75, "prototype_movement": moved,
            "nn_distance_quantiles": {"p0": 0.01, "p5": 0.1, "p50": 0.3},
            "epochs": [{"unique_prototypes": k}, {"unique_prototypes": unique}],
        },
    }  # fmt: skip


def verdicts(records: list[dict[str, Any]]) -> tuple[str, str]:
    lines = collapse_section(records)
    q1 = next(line for line in lines if line.startswith("- **Q1"))
    q2 = next(line for line in lines if line.startswith("- **Q2"))
    return q1, q2


def test_collapse_in_moved_baselines_is_seen_and_koleo_proto_judged() -> None:
    runs = [record(1024, 0.0, s, 300, 0.2) for s in (0, 1)]
    runs += [record(256, 0.0, 0, 256, 0.2), record(1024, 0.1, 0, 1024, 0.2)]
    q1, q2 = verdicts(runs)
    assert "SEEN" in q1 and "NOT SEEN" not in q1 and "K = [1024]" in q1
    assert q2.endswith("PREVENTS**")
    q1, q2 = verdicts([*runs[:3], record(1024, 0.1, 0, 500, 0.2)])
    assert q2.endswith("DOES NOT PREVENT**")


def test_runs_whose_prototypes_did_not_move_decide_nothing() -> None:
    still = [record(k, 0.0, 0, k // 4, 0.01) for k in (256, 1024)]  # collapsed, but unmoved
    q1, q2 = verdicts(still)
    assert "NOT DECIDED" in q1 and "NOTHING TO PREVENT" in q2
    assert "0 of 2 finished runs are informative" in "\n".join(collapse_section(still))


def test_all_prototypes_kept_in_moved_runs_at_two_k_is_not_seen() -> None:
    q1, _ = verdicts([record(k, 0.0, 0, k, 0.3) for k in (256, 4096)])
    assert "NOT SEEN" in q1
    q1, _ = verdicts([record(256, 0.0, 0, 256, 0.3)])  # one K is not enough
    assert "NOT DECIDED" in q1


def test_the_rules_are_printed_with_their_thresholds() -> None:
    text = "\n".join(collapse_section([record(256, 0.0, 0, 256, 0.3)]))
    assert ">= 0.1" in text and "<= 0.9" in text and "MIN_MOVEMENT" not in text
