"""SIGTERM to a training process: it checkpoints at the next step boundary, exits with 143 saying
where the checkpoint is, and a rerun into the same directory continues from exactly that step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import TINY_NETWORK

from fastproto.config import load_config
from fastproto.train.checkpoint import latest_checkpoint, load_checkpoint
from fastproto.train.loop import train
from fastproto.train.metrics import read_metrics

# the tiny network, with an epoch budget the signal cuts short and no periodic checkpoint
TINY = [*TINY_NETWORK, "optim.epochs=100", "run.checkpoint_every=1000"]


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastproto.data_prep.prepare import prepare_fashion_mnist

    data = prepare_fashion_mnist(tmp_path / "data", "ffcv", limit=24)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fastproto",
        "train",
        "--config",
        "demo",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY,
    ]
    proc = subprocess.Popen(
        command, env=os.environ | {"PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while len(read_metrics(out / "metrics.jsonl")) < 2:
        assert proc.poll() is None, "training exited before it was signalled"
        assert time.monotonic() < deadline, "no training step within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # stopped, not finished: 128 + SIGTERM, after a checkpoint, saying where it is
    assert proc.returncode == 128 + signal.SIGTERM, err
    steps = read_metrics(out / "metrics.jsonl")
    newest = latest_checkpoint(out)
    assert f"stopped by SIGTERM at step {len(steps)}; checkpoint {newest}" in err
    saved = load_checkpoint(newest)  # type: ignore[arg-type]
    # checkpoint_every=1000 never fired: this checkpoint is the one the signal asked for
    assert saved["step"] == len(steps) >= 2
    stopped_at = int(saved["step"])
    config = load_config(
        "demo",
        [
            f"data.path={str(data)!r}",
            f"run.out={str(out)!r}",
            *TINY,
            f"run.max_steps={stopped_at + 2}",
        ],
    )
    result = train(config)
    assert f"resumed from {newest} at step {stopped_at}" in capsys.readouterr().out
    assert result.step == stopped_at + 2
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(
        range(1, stopped_at + 3)
    )
