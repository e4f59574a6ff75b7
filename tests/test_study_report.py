"""The study report from run records with known numbers: tables, verdicts, PNGs, traceability.

Expected numbers are worked out here with `statistics` and `math` from the fixture values, not
taken from the report code.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from fastproto.study import claims
from fastproto.study.commands import add_study_commands
from fastproto.study.report import build_report
from fastproto.study.results import Row

# (run id, K, regulariser, lambda, norm, centring, batch, seed, M, kNN)
RUNS = [
    ("b64s0", 64, "none", 0.0, "vmf", "probability", 32, 0, 20, 0.60),
    ("b64s1", 64, "none", 0.0, "vmf", "probability", 32, 1, 22, 0.62),
    ("b256s0", 256, "none", 0.0, "vmf", "probability", 32, 0, 24, 0.61),
    ("b256s1", 256, "none", 0.0, "vmf", "probability", 32, 1, 26, 0.61),
    ("kp64s0", 64, "koleo-proto", 0.1, "vmf", "probability", 32, 0, 64, 0.63),
    ("kp64s1", 64, "koleo-proto", 0.1, "vmf", "probability", 32, 1, 62, 0.65),
    ("kp256s0", 256, "koleo-proto", 0.1, "vmf", "probability", 32, 0, 250, 0.70),
    ("kp256s1", 256, "koleo-proto", 0.1, "vmf", "probability", 32, 1, 254, 0.72),
    ("l002s0", 64, "koleo-proto", 0.02, "vmf", "probability", 32, 0, 40, 0.62),
    ("l002s1", 64, "koleo-proto", 0.02, "vmf", "probability", 32, 1, 42, 0.62),
    ("l05s0", 64, "koleo-proto", 0.5, "vmf", "probability", 32, 0, 64, 0.64),
    ("l2logit", 64, "koleo-proto", 0.1, "l2", "logit", 32, 0, 60, 0.50),
    ("l2prob", 64, "koleo-proto", 0.1, "l2", "probability", 32, 0, 61, 0.55),
    ("vmflogit", 64, "koleo-proto", 0.1, "vmf", "logit", 32, 0, 63, 0.60),
    ("sk32", 64, "koleo-proto", 0.1, "vmf", "sinkhorn", 32, 0, 63, 0.62),
    ("mm32", 64, "koleo-proto", 0.1, "vmf", "me-max", 32, 0, 63, 0.58),
    ("p128", 64, "koleo-proto", 0.1, "vmf", "probability", 128, 0, 64, 0.70),
    ("sk128", 64, "koleo-proto", 0.1, "vmf", "sinkhorn", 128, 0, 64, 0.71),
]
SHARES = {"b64s0": {"1": 0.01, "4": 0.05}, "b64s1": {"1": 0.03, "4": 0.07}}


def record(run: tuple[Any, ...]) -> dict[str, Any]:
    rid, k, reg, lam, norm, cent, batch, seed, m, knn = run
    config = {
        "head": {"num_prototypes": k, "norm": norm},
        "method": {
            "koleo_proto": lam if reg == "koleo-proto" else 0.0,
            "koleo_data": lam if reg == "koleo-data" else 0.0,
            "centering": "none" if cent == "me-max" else cent,
        },
        "optim": {"batch_size": batch},
        "run": {"seed": seed},
    }
    share = SHARES.get(rid, {"1": 1 / m})
    metrics = {
        "knn_top1": {"10": knn - 0.05, "20": knn},
        "unique_prototypes": m,
        "linear_top1": knn + 0.1,
        "data_share_by_redundancy": share,
    }
    out = {
        "run_id": rid,
        "groups": ["main"],
        "settings": {"centering": cent},
        "status": "ok",
        "config": config,
        "metrics": metrics,
    }
    return out


def write_fixture(folder: Path, runs: list[tuple[Any, ...]]) -> None:
    results = folder / "results"
    results.mkdir(parents=True)
    for run in runs:
        (results / f"{run[0]}.json").write_text(json.dumps(record(run)))
    error = "ValueError: unknown config key 'head.bogus'"
    failed = {
        "run_id": "bad",
        "groups": ["main"],
        "settings": {},
        "status": "failed",
        "error": error,
        "traceback": "...",
    }
    (results / "bad.json").write_text(json.dumps(failed))


def verdicts(text: str) -> list[str]:
    return re.findall(r"\*\*Verdict: ([A-Z ]+)\*\*", text)


def test_report_numbers_verdicts_and_figures(tmp_path: Path) -> None:
    write_fixture(tmp_path, RUNS)
    text = build_report(tmp_path).read_text()
    assert verdicts(text) == ["SUPPORTED"] * 5
    growth = math.log(statistics.mean([24, 26]) / statistics.mean([20, 22])) / math.log(256 / 64)
    assert f"growth exponent g = {growth:.3f}" in text
    assert f"K=256: mean M/K = {statistics.mean([250, 254]) / 256:.3f}" in text
    assert "K=256: KoLeo-proto 71.0% vs baseline 61.0%" in text
    assert "batch 32, probability: 64.0%" in text and "batch 32, me-max: 58.0%" in text
    # lambda table row 0.02: mean and sample std of M (40, 42), M/K, kNN, linear, its runs
    spread = statistics.stdev([40, 42])
    row = (
        f"| 0.02 | 41.0 ± {spread:.1f} (n=2) | {41 / 64:.3f} | 62.0 ± 0.0 (n=2) | 72.0 ± 0.0 (n=2)"
    )
    assert row in text and "l002s0, l002s1" in text
    assert "| 0 | 21.0 ± 1.4 (n=2) |" in text  # lambda 0 is the baseline
    # data share: r = 4 averages 0.05 and 0.07 over the two baseline seeds at K 64
    share = (
        f"| none | 4 | {statistics.mean([0.05, 0.07]):.4f} ± {statistics.stdev([0.05, 0.07]):.4f}"
    )
    assert share in text
    # norm x centring matrix: vmf row, probability column is the main KoLeo-proto cell
    main = [0.63, 0.65]
    cells = [
        "60.0 (n=1)",
        "58.0 (n=1)",
        f"{100 * statistics.mean(main):.1f} ± {100 * statistics.stdev(main):.1f} (n=2)",
        "62.0 (n=1)",
    ]
    assert "| norm | logit | me-max | probability | sinkhorn |" in text
    assert "| vmf | " + " | ".join(cells) + " |" in text
    assert "- vmf/probability: kp64s0, kp64s1" in text
    assert (
        "| bad.json | failed | main | – | – | ValueError: unknown config key 'head.bogus' |" in text
    )
    for name in ("unique_vs_k", "knn_vs_k", "share_vs_redundancy", "centering_vs_batch"):
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_negative_and_missing_verdicts(tmp_path: Path) -> None:
    # only K = 64 for the baseline, KoLeo-proto keeps too few, sinkhorn wins at batch 32
    runs = [r for r in RUNS if r[1] == 64 and r[0] not in ("kp64s0", "kp64s1")]
    runs += [("kpbad", 64, "koleo-proto", 0.1, "vmf", "probability", 32, 0, 50, 0.61)]
    write_fixture(tmp_path, runs)
    text = build_report(tmp_path, tmp_path / "out" / "r.md").read_text()
    assert verdicts(text) == [
        "NOT ENOUGH DATA",
        "NOT SUPPORTED",
        "NOT ENOUGH DATA",
        "NOT SUPPORTED",
        "NOT SUPPORTED",
    ]
    assert f"K=64: mean M/K = {50 / 64:.3f}" in text
    assert (tmp_path / "out" / "figures" / "unique_vs_k.png").is_file()


def row(k: int, reg: str, lam: float, m: float, knn: float, seed: int = 0) -> Row:
    return Row(
        f"{k}{reg}{seed}",
        f"{k}{reg}{seed}",
        k,
        reg,
        lam,
        "vmf",
        "probability",
        32,
        seed,
        m,
        knn,
        None,
    )


def test_collapse_rule_thresholds() -> None:
    # M/K = 0.5 at the largest K and growth exponent exactly log2(2)/log2(4) = 0.5 > 0.25
    rows = [row(64, "none", 0.0, 64, 0.5), row(256, "none", 0.0, 128, 0.5)]
    assert claims.baseline_collapse(rows).verdict == claims.REJECTED
    rows = [row(64, "none", 0.0, 30, 0.5), row(1024, "none", 0.0, 60, 0.5)]  # g = 0.25, M/K small
    assert claims.baseline_collapse(rows).verdict == claims.SUPPORTED
    # kNN must grow with K for KoLeo-proto
    flat = [
        row(64, "koleo-proto", 0.1, 64, 0.6),
        row(256, "koleo-proto", 0.1, 256, 0.6),
        row(64, "none", 0.0, 10, 0.5),
        row(256, "none", 0.0, 10, 0.5),
    ]
    assert claims.koleo_knn(flat).verdict == claims.REJECTED


def test_report_command_through_a_parser(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="fastproto")
    add_study_commands(parser.add_subparsers(dest="command", required=True))
    write_fixture(tmp_path, RUNS[:4])
    args = parser.parse_args(["report", str(tmp_path), "--out", str(tmp_path / "x.md")])
    assert args.func(args) == 0 and (tmp_path / "x.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = parser.parse_args(["report", str(empty)])
    assert args.func(args) == 2
    assert "no run JSON files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--out", "x"])  # --grid is required


def test_incomplete_ok_record_is_named(tmp_path: Path) -> None:
    write_fixture(tmp_path, RUNS[:2])
    broken = record(RUNS[2])
    del broken["metrics"]["unique_prototypes"]
    (tmp_path / "results" / "b256s0.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="b256s0.json says status ok but lacks"):
        build_report(tmp_path)


def test_a_recipe_regulariser_does_not_make_a_baseline_a_koleo_data_run() -> None:
    # the study recipe trains every run with KoLeo-data 0.1; the grid's regulariser axis says
    # which runs are baselines (none) and which KoLeo-proto
    from fastproto.study.results import to_row

    base = record(("b", 64, "koleo-data", 0.1, "vmf", "probability", 32, 0, 60, 0.6))
    base["settings"] |= {"regulariser": "none", "koleo_lambda": 0.0}
    kp = record(("k", 64, "koleo-data", 0.1, "vmf", "probability", 32, 0, 64, 0.6))
    kp["config"]["method"]["koleo_proto"] = 0.1
    kp["settings"] |= {"regulariser": "koleo-proto", "koleo_lambda": 0.1}
    assert (to_row("b", base).regulariser, to_row("b", base).lam) == ("none", 0.0)
    assert (to_row("k", kp).regulariser, to_row("k", kp).lam) == ("koleo-proto", 0.1)
    # a record without the grid's axis falls back to the config
    plain = record(("p", 64, "koleo-data", 0.3, "vmf", "probability", 32, 0, 60, 0.6))
    assert (to_row("p", plain).regulariser, to_row("p", plain).lam) == ("koleo-data", 0.3)


def with_history(run: tuple[Any, ...], proto_decay: float, falls_at: int | None) -> dict:
    """A record with the newer fields: a per-epoch history with the decay clock and usage, the
    resolved decay settings, the final clock. M / K falls to M / K at `falls_at` (epoch index)."""
    out = record(run)
    k, m = run[1], run[8]
    out["config"]["optim"] |= {
        "weight_decay": 0.8,
        "weight_decay_end": 0.8,
        "prototype_weight_decay": proto_decay,
        "prototype_weight_decay_end": proto_decay,
    }
    epochs = []
    for i in range(5):
        unique = m if falls_at is not None and i >= falls_at else k
        epochs.append(
            {
                "step": 100 * (i + 1),
                "epoch": i,
                "unique_prototypes": unique,
                "num_prototypes": k,
                "nn_distance_quantiles": {"p0": 0.0, "p5": 0.05, "p50": 0.3},
                "used_prototypes": unique // 2,
                "effective_prototypes": unique / 4,
                "prototype_decay_clock": 0.04 * (i + 1),
            }
        )
    out["metrics"] |= {
        "num_prototypes": k,
        "epochs": epochs,
        "prototype_decay_clock": 0.2,
        "nn_distance_quantiles": {"p0": 0.0, "p5": 0.05, "p50": 0.3},
    }
    return out


def test_report_with_the_decay_clock_usage_and_a_decay_ablation(tmp_path: Path) -> None:
    write_fixture(tmp_path, RUNS[:2])  # two records without the newer fields
    results = tmp_path / "results"
    both = with_history(("both", 64, "none", 0.0, "vmf", "probability", 32, 0, 16, 0.6), -1.0, 3)
    kept = with_history(
        ("kept", 64, "koleo-proto", 0.1, "vmf", "probability", 32, 0, 64, 0.62), 0.0, None
    )
    em = with_history(("em", 64, "none", 0.0, "vmf", "probability", 32, 1, 64, 0.61), 0.0, None)
    em["config"]["head"]["prototypes"] = "em"  # takes no decay: not on the clock's axis
    for rec in (both, kept, em):
        (results / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    text = build_report(tmp_path).read_text()
    # the clock figure: drawn from the two runs that record the clock, linked in the report
    assert "2 of 4 finished runs with decayed prototypes record the clock (1 with EM" in text
    assert "![M / K and nn p5 against the decay clock](figures/decay_clock.png)" in text
    png = (tmp_path / "figures" / "decay_clock.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # used and effective prototypes of the last epoch in the per-run table; '-' for old records
    assert re.search(r"\| both \| 64 \| 0 \| 0 \| - \| .* \| 8 \| 4\.0 \| 60\.0 \|", text)
    # an old record: no movement, history or usage; collapsed (M / K = 20 / 64), so informative
    assert "| b64s0 | 64 | 0 | 0 | - | - | yes | - | - / - / - | - | - | 60.0 | 70.0 |" in text
    # the decay ablation: M / K first at or below 0.9 at step 400 (epoch 3), clock 0.16 there
    assert "| both | 64 | 0.8 | 0.8 (network's) | 0 | 0.250 | 400 | 0.160 | 0.200 |" in text
    assert "| kept | 64 | 0.8 | 0 | 0.1 | 1.000 | - | - | 0.200 |" in text
    # EM prototypes take no decay: their clock reads 0 whatever the record logged
    em_row = "| em | 64 | 0.8 | none (EM: kappa fitted, dead keep) | 0 | 1.000 | - | - | 0.000 |"
    assert em_row in text
    # rules come before the results they decide
    assert text.index("- informative:") < text.index("**Q1") < text.index("| run |")


def test_report_on_old_records_has_no_clock_figure(tmp_path: Path) -> None:
    write_fixture(tmp_path, RUNS[:4])
    text = build_report(tmp_path).read_text()
    assert "0 of 4 finished runs with decayed prototypes record the clock (0 with EM" in text
    assert "decay_clock.png" not in text
    assert not (tmp_path / "figures" / "decay_clock.png").exists()
    assert "(network -, prototypes -): no ablation." in text


def test_runs_whose_group_adds_overrides_are_ablations_not_recipe_runs() -> None:
    from fastproto.study.grid import settings_overrides
    from fastproto.study.mechanism import decay_settings
    from fastproto.study.report import is_ablation

    base = ["run.knn_every_epochs=0", "data.workers=1"]
    settings = {"num_prototypes": 1024, "regulariser": "none", "koleo_lambda": 0.0, "seed": 0}
    plain = {"settings": settings, "overrides": base + settings_overrides(settings)}
    em = {**plain, "overrides": plain["overrides"] + ["head.prototypes='em'"]}
    common = set(base)
    assert not is_ablation(plain, common) and is_ablation(em, common)
    decay = decay_settings(
        {"optim": {"weight_decay": 0.8, "weight_decay_end": 0.8}, "head": {"prototypes": "em"}}
    )
    assert decay.decayed() == (True, False)
    assert decay.texts()[1] == "none (EM: kappa fitted, dead keep)"
    fixed = {"prototypes": "em", "em_concentration": "fixed", "em_estep": "centred"}
    text = decay_settings({"optim": {}, "head": fixed}).texts()[1]
    assert text == "none (EM: kappa fixed, dead keep, centred E-step)"
