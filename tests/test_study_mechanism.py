"""The decay ablation table: which parameters were decayed, read from the resolved config, and
where each run's M / K first reached 0.9 on the step and decay-clock axes."""

from __future__ import annotations

from typing import Any

from fastproto.study.mechanism import (
    COLUMNS,
    ablation_runs,
    decay_settings,
    mechanism_row,
    mechanism_section,
)


def optim(wd: float, wd_end: float, proto: float | None, proto_end: float | None) -> dict:
    out: dict[str, Any] = {"weight_decay": wd, "weight_decay_end": wd_end}
    if proto is not None:
        out |= {"prototype_weight_decay": proto, "prototype_weight_decay_end": proto_end}
    return {"optim": out, "head": {"num_prototypes": 100}, "method": {"koleo_proto": 0.0}}


def texts(config: dict) -> tuple[str, str]:
    return decay_settings(config).texts()


def test_decay_settings_resolve_the_prototype_schedule() -> None:
    assert texts(optim(0.8, 0.8, -1.0, -1.0)) == ("0.8", "0.8 (network's)")
    assert texts(optim(0.04, 0.4, -1.0, -1.0)) == ("0.04 -> 0.4", "0.04 -> 0.4 (network's)")
    assert texts(optim(0.8, 0.8, 0.0, 0.0)) == ("0.8", "0")
    assert texts(optim(0.0, 0.0, 0.8, 0.8)) == ("0", "0.8")
    assert texts(optim(0.8, 0.8, 0.1, 0.5)) == ("0.8", "0.1 -> 0.5")
    # configs from before the prototype schedule: head.prototype_weight_decay, a switch
    legacy = optim(0.8, 0.8, None, None)
    assert texts(legacy) == ("0.8", "0.8 (network's)")
    legacy["head"]["prototype_weight_decay"] = False
    assert texts(legacy) == ("0.8", "0")
    assert texts({}) == ("-", "-")


def test_which_parameters_decay() -> None:
    assert decay_settings(optim(0.8, 0.8, -1.0, -1.0)).decayed() == (True, True)
    assert decay_settings(optim(0.0, 0.0, -1.0, -1.0)).decayed() == (False, False)
    assert decay_settings(optim(0.8, 0.8, 0.0, 0.0)).decayed() == (True, False)
    assert decay_settings(optim(0.0, 0.0, 0.0, 0.4)).decayed() == (False, True)  # ends decayed
    assert decay_settings({}).decayed() == (None, None)


def record(
    name: str, config: dict, lam: float, uniques: list[int], clock: bool = True
) -> dict[str, Any]:
    config["method"]["koleo_proto"] = lam
    epochs = []
    for i, m in enumerate(uniques):
        row: dict[str, Any] = {
            "step": 1000 * (i + 1),
            "unique_prototypes": m,
            "num_prototypes": 100,
            "nn_distance_quantiles": {"p5": 0.1},
            "used_prototypes": m // 2,
        }
        if clock:
            row["prototype_decay_clock"] = 0.5 * (i + 1)
        epochs.append(row)
    metrics = {
        "num_prototypes": 100,
        "unique_prototypes": uniques[-1],
        "knn_top1": {"20": 0.654},
        "nn_distance_quantiles": {"p5": 0.0123},
        "epochs": epochs,
    }
    if clock:
        metrics["prototype_decay_clock"] = 2.25
    return {"run_id": name, "status": "ok", "config": config, "metrics": metrics}


def test_the_ablation_holds_the_usual_teacher_temperature_only() -> None:
    runs = [
        record("only-network", optim(0.8, 0.8, 0.0, 0.0), 0.0, [100, 100]),
        record("both", optim(0.8, 0.8, -1.0, -1.0), 0.0, [100, 60]),
        record("cold", optim(0.0, 0.0, 0.8, 0.8), 0.0, [100, 70]),
    ]
    for run, temp in zip(runs, (0.04, 0.04, 0.02), strict=True):
        run["config"]["method"]["teacher_temp"] = temp
    assert [r["run_id"] for r, _ in ablation_runs(runs)] == ["only-network", "both"]


def test_rows_first_crossing_its_clock_and_the_final_clock() -> None:
    # M / K: 1.0, 0.95, 0.9 (the first at or below 0.9: step 3000, clock 1.5), 0.5
    both = record("both", optim(0.8, 0.8, -1.0, -1.0), 0.0, [100, 95, 90, 50])
    row = mechanism_row(both, 100)
    assert list(row) == list(COLUMNS)
    assert row["network decay"] == "0.8" and row["prototype decay"] == "0.8 (network's)"
    assert row["KoLeo-proto lambda"] == "0" and row["final M / K"] == "0.500"
    assert row["first step M / K <= 0.9"] == "3000" and row["clock there"] == "1.500"
    assert row["final clock"] == "2.250" and row["nn p5"] == "0.012"
    assert row["used"] == "25" and row["kNN"] == "65.4" and row["linear"] == "-"


def test_rows_of_a_run_that_never_collapsed_or_has_no_clock() -> None:
    kept = record("kept", optim(0.8, 0.8, 0.0, 0.0), 0.1, [100, 99, 98], clock=False)
    row = mechanism_row(kept, 100)
    assert row["first step M / K <= 0.9"] == "-" and row["clock there"] == "-"
    assert row["final clock"] == "-" and row["KoLeo-proto lambda"] == "0.1"
    late = record("late", optim(0.8, 0.8, 0.0, 0.0), 0.0, [100, 90], clock=False)
    assert mechanism_row(late, 100)["first step M / K <= 0.9"] == "2000"
    assert mechanism_row(late, 100)["clock there"] == "-"
    # without the evaluation's final clock the last epoch's clock stands in
    both = record("both", optim(0.8, 0.8, -1.0, -1.0), 0.0, [100, 95])
    del both["metrics"]["prototype_decay_clock"]
    assert mechanism_row(both, 100)["final clock"] == "1.000"


def test_the_section_lists_every_run_when_the_decay_differs() -> None:
    runs = [
        record("only-network", optim(0.8, 0.8, 0.0, 0.0), 0.0, [100, 100]),
        record("both", optim(0.8, 0.8, -1.0, -1.0), 0.0, [100, 60]),
        record("only-prototypes", optim(0.0, 0.0, 0.8, 0.8), 0.0, [100, 70]),
        {"run_id": "bad", "status": "failed"},
        record("other-k", optim(0.8, 0.8, -1.0, -1.0), 0.0, [100, 60]),
    ]
    # at another K every run decays the same parameters: not part of the ablation
    runs[-1]["metrics"]["num_prototypes"] = 200
    lines = mechanism_section(runs)
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| " + " | ".join(COLUMNS) + " |"
    # sorted by network decay, then prototype decay
    order = [line.split(" | ")[0] for line in table[1:]]
    assert order == ["| only-prototypes", "| only-network", "| both"]
    text = "\n".join(lines)
    assert "| both | 100 | 0.8 | 0.8 (network's) | 0 | 0.600 | 2000 | 1.000 | 2.250 |" in text
    assert "decides nothing" in text
    # a record whose config does not say how it decayed joins a table but makes none
    unknown = record("old", {"head": {}, "method": {}}, 0.0, [100])
    assert ablation_runs([runs[0], unknown]) == []
    assert [r["run_id"] for r, _ in ablation_runs([*runs[:2], unknown])] == [
        "only-network",
        "both",
        "old",
    ]
    # runs that decay the same parameters by different amounts are no ablation of which
    stronger = record("b4", optim(4.0, 4.0, -1.0, -1.0), 0.1, [100])
    same = mechanism_section(runs[1:2] + [stronger])
    assert not any(line.startswith("| ") for line in same)
    assert same[2] == (
        "No K has runs that differ in which parameters decay (network 0.8, prototypes 0.8 "
        "(network's); network 4, prototypes 4 (network's)): no ablation."
    )
