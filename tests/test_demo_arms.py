"""`fastproto demo`: two arms, one KoLeo-proto weight apart, trained side by side, evaluated,
printed and plotted (tiny shapes; the collapse itself is guarded in test_collapse_guard.py)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fastproto.train.progress import epoch_summary
from fastproto.train.two_arms import ARMS, run_two_arm_demo

TINY = [
    "model.arch=vit_pico_patch7_28",
    "head.num_prototypes=32",
    "head.hidden_dim=32",
    "head.bottleneck_dim=16",
    "optim.batch_size=8",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "run.knn_every_epochs=0",
    "method.loss_impl=chunked",
]


def test_two_arms_train_apart_and_report_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FASTPROTO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    summary = run_two_arm_demo(out, seed=3, overrides=TINY, images=40)
    assert "exit" not in summary, summary
    for name, weight in ARMS.items():
        saved = tomllib.loads((out / name / "config.toml").read_text())
        assert saved["method"]["koleo_proto"] == weight and saved["run"]["seed"] == 3
        assert saved["data"]["workers"] == 1
        arm = summary[name]
        assert arm["step"] == 10 and 1 <= arm["unique_prototypes"] <= 32  # 2 epochs of 5
        assert 1 <= arm["used_prototypes"] <= 32 and 1.0 <= arm["effective_prototypes"] <= 32
        assert 0.0 <= arm["knn_top1"]["20"] <= 1.0
    assert json.loads((out / "demo_results.json").read_text()) == summary
    assert (out / "demo.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "trained teacher, baseline" in printed and "trained teacher, koleo-proto" in printed
    assert "network at initialisation" in printed and "raw pixels" in printed
    # rerun: both arms are finished, so they resume at their end and are only evaluated
    again = run_two_arm_demo(out, seed=3, overrides=TINY, images=40)
    assert again["baseline"]["checkpoint"] == summary["baseline"]["checkpoint"]


def test_epoch_summary_line_shows_m_over_k_and_usage() -> None:
    record = {
        "epoch": 4,
        "unique_prototypes": 92,
        "num_prototypes": 1024,
        "largest_duplicate_set": 343,
        "used_prototypes": 80,
        "effective_prototypes": 61.4,
        "nn_distance_quantiles": {"p5": 0.0031},
        "knn_top1": {"10": 0.8, "20": 0.803},
    }
    line = epoch_summary(record)
    assert line.startswith("epoch 4: M 92/1024 (0.09)")
    assert "largest duplicate set 343" in line and "used 80" in line and "effective 61" in line
    assert "nn p5 0.003" in line and "kNN k=20 80.3%" in line
