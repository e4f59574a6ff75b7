"""The sweep runner: records, failures that do not stop the sweep, interruption and resume.

The fast tests replace training and evaluation by stand-ins to check the bookkeeping; the slow
test trains two real runs of three steps on a few hundred demo images, interrupts the second
after its first checkpoint, resumes it, and builds the report from the records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fastproto.config import TrainConfig
from fastproto.study.grid import parse_grid
from fastproto.study.report import build_report
from fastproto.study.runner import read_record, run_sweep, write_json_atomic
from fastproto.train.loop import RunResult


def fake_grid(extra_group: dict[str, Any] | None = None) -> Any:
    tree: dict[str, Any] = {
        "recipe": "demo",
        "overrides": ['data.path="/nonexistent"'],
        "axes": {"num_prototypes": [64, 128], "seed": [0]},
    }
    if extra_group:
        tree["groups"] = {"broken": extra_group}
    return parse_grid(tree)


class FakeTrainer:
    """Records the configs it is given; optionally interrupts the n-th call."""

    def __init__(self, interrupt_at: int = 0) -> None:
        self.seen: list[TrainConfig] = []
        self.interrupt_at = interrupt_at

    def __call__(self, config: TrainConfig) -> RunResult:
        self.seen.append(config)
        if len(self.seen) == self.interrupt_at:
            raise KeyboardInterrupt
        return RunResult(Path(config.run.out), 5, 1, False, {"loss": 1.5})


def fake_evaluate(run_dir: Path, data: str, device: torch.device, options: dict) -> dict:
    return {"knn_top1": {"20": 0.5}, "unique_prototypes": 7, "options": sorted(options)}


def records(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    grid = fake_grid({"num_prototypes": [32], "overrides": ["head.bogus=1"]})
    broken = next(s.run_id for s in grid.runs if "broken" in s.groups)
    # put the broken run first so that the others must still run after it
    grid.runs.sort(key=lambda s: s.run_id != broken)
    trainer = FakeTrainer()
    summary = run_sweep(grid, tmp_path, trainer, fake_evaluate, progress=False)
    assert summary.failed == [broken] and len(summary.ran) == 3 and not summary.stopped
    found = records(tmp_path)
    assert found[broken]["status"] == "failed"
    assert "unknown config key 'head.bogus'" in found[broken]["error"]
    assert "Traceback" in found[broken]["traceback"]
    assert sorted(c.head.num_prototypes for c in trainer.seen) == [64, 128]
    for spec in grid.runs:
        if spec.run_id == broken:
            continue
        rec = found[spec.run_id]
        assert rec["status"] == "ok" and rec["metrics"]["unique_prototypes"] == 7
        assert rec["config"]["head"]["num_prototypes"] == spec.settings["num_prototypes"]
        assert rec["config"]["run"]["out"] == str(tmp_path / spec.run_id)
        # the decay settings the report's decay ablation reads (fastproto.study.mechanism)
        decay = (
            "weight_decay",
            "weight_decay_end",
            "prototype_weight_decay",
            "prototype_weight_decay_end",
        )
        assert all(isinstance(rec["config"]["optim"][key], float) for key in decay)
        assert rec["train"] == {"step": 5, "epoch": 1, "last_terms": {"loss": 1.5}}
        assert rec["commit"] and set(rec["timings"]) == {"train_s", "eval_s", "total_s"}
    assert not list((tmp_path / "results").glob(".*"))  # no temporary files left behind
    # a rerun skips the finished runs and retries only the failed one
    again = FakeTrainer()
    summary = run_sweep(grid, tmp_path, again, fake_evaluate, progress=False)
    assert sorted(summary.skipped) == sorted(s.run_id for s in grid.runs if s.run_id != broken)
    assert summary.ran == [broken] and again.seen == []


def test_interrupt_stops_the_sweep_and_the_rerun_finishes(tmp_path: Path) -> None:
    grid = fake_grid()
    first, second = (s.run_id for s in grid.runs)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, tmp_path, FakeTrainer(interrupt_at=2), fake_evaluate, progress=False)
    found = records(tmp_path)
    assert found[first]["status"] == "ok" and found[second]["status"] == "interrupted"
    trainer = FakeTrainer()
    summary = run_sweep(grid, tmp_path, trainer, fake_evaluate, progress=False)
    assert summary.skipped == [first] and summary.ran == [second]
    assert [Path(c.run.out).name for c in trainer.seen] == [second]
    assert records(tmp_path)[second]["status"] == "ok"


def test_atomic_write_replaces_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "results" / "r.json"
    write_json_atomic({"status": "running"}, path)
    write_json_atomic({"status": "ok", "x": 1.5}, path)
    assert read_record(path) == {"status": "ok", "x": 1.5}
    path.write_text("{truncated")
    assert read_record(path) is None  # an unreadable record means: run again
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


@pytest.mark.slow
def test_real_two_run_sweep_with_interruption_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastproto.train.loop import train

    monkeypatch.setenv("FASTPROTO_CACHE", str(tmp_path / "cache"))
    grid = parse_grid(
        {
            "recipe": "demo",
            "demo_images": 256,
            "overrides": [
                "run.max_steps=3",
                "optim.batch_size=32",
                "data.workers=1",
                "run.checkpoint_every=1",
                "head.hidden_dim=64",
            ],
            "eval": {"linear_epochs": 5, "fewshot_shots": [1]},
            "axes": {"num_prototypes": [64], "regulariser": ["none", "koleo-proto"], "seed": [0]},
        }
    )
    first, second = (s.run_id for s in grid.runs)
    out = tmp_path / "sweep"
    calls: list[str] = []

    def interrupted_second(config: TrainConfig) -> RunResult:
        calls.append(Path(config.run.out).name)
        if len(calls) == 2:  # the second run stops after its first step, as if killed
            config.run.max_steps = 1
            train(config)
            raise KeyboardInterrupt
        return train(config)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, out, interrupted_second, progress=False)
    assert records(out)[second]["status"] == "interrupted"
    assert (out / second / "checkpoint-000000001.pt").is_file()

    calls.clear()

    def recording(config: TrainConfig) -> RunResult:
        calls.append(Path(config.run.out).name)
        return train(config)

    summary = run_sweep(grid, out, recording, progress=False)
    assert calls == [second] and summary.skipped == [first] and summary.ran == [second]
    rec = records(out)[second]
    assert rec["status"] == "ok" and rec["resumed_from"] == "checkpoint-000000001.pt"
    assert rec["train"]["step"] == 3 and rec["metrics"]["step"] == 3
    metrics = rec["metrics"]
    assert metrics["num_prototypes"] == 64 and 1 <= metrics["unique_prototypes"] <= 64
    assert sum(int(r) * n for r, n in metrics["redundancy_histogram"].items()) == 64
    assert set(metrics["knn_top1"]) == {"10", "20"} and 0 <= metrics["linear_top1"] <= 1
    assert set(metrics["fewshot"]) == {"1"}
    assert rec["config"]["method"]["koleo_proto"] == 0.1
    text = build_report(out).read_text()
    assert text.count("**Verdict:") == 5
    assert f"{first}.json" in text and f"{second}.json" in text


def test_shards_split_the_runs_without_overlap(tmp_path: Path) -> None:
    grid = parse_grid(
        {
            "recipe": "demo",
            "overrides": ['data.path="/nonexistent"'],
            "axes": {"num_prototypes": [16, 32, 64], "seed": [0]},
        }
    )
    first, second = FakeTrainer(), FakeTrainer()
    a = run_sweep(grid, tmp_path, first, fake_evaluate, progress=False, shard=(0, 2))
    b = run_sweep(grid, tmp_path, second, fake_evaluate, progress=False, shard=(1, 2))
    assert len(a.ran) == 2 and len(b.ran) == 1 and not set(a.ran) & set(b.ran)
    assert sorted(a.ran + b.ran) == sorted(s.run_id for s in grid.runs)
    with pytest.raises(ValueError, match="0 <= i < n"):
        run_sweep(grid, tmp_path, first, fake_evaluate, progress=False, shard=(2, 2))
