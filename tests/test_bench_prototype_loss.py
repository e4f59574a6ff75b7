"""bench/prototype_loss.py on a GPU keeps going past a point that fails (the headline step of
bench/gpu_suite.sh times several presets and impls in one process), and the CPU smoke run does
not."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import prototype_loss  # noqa: E402


def _failing_measure(*_args: object) -> None:
    raise RuntimeError("out of resource: shared memory, Required: 245952, Hardware limit: 232448")


def test_a_failing_gpu_point_reads_nan_and_the_next_one_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(prototype_loss, "measure", _failing_measure)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    preset = prototype_loss.presets()["cls-b64-k65536"]
    args = argparse.Namespace(smoke=False, warmup=1, repeats=3)
    timing, mib = prototype_loss.run_one(
        preset, "triton", torch.device("cuda"), args, torch.bfloat16
    )
    assert math.isnan(timing.p50) and math.isnan(mib)
    assert "out of resource: shared memory" in capsys.readouterr().err


def test_a_failing_cpu_smoke_point_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prototype_loss, "measure", _failing_measure)
    preset = prototype_loss.presets()["smoke-k1024"]
    args = argparse.Namespace(smoke=True, warmup=1, repeats=1)
    with pytest.raises(RuntimeError, match="out of resource"):
        prototype_loss.run_one(preset, "triton", torch.device("cpu"), args, torch.float32)
