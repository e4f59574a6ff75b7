"""Checkpoint files: atomic write, rotation, RNG round trip, and refusal of bad files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fastproto.train.checkpoint import (
    CheckpointError,
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

SIG = {"arch": "vit_pico_patch4_28", "num_prototypes": 16}


def _state(step: int) -> dict:
    return {"step": step, "signature": SIG, "weights": torch.arange(5.0) * step}


def test_save_load_round_trip_and_rotation(tmp_path: Path) -> None:
    for step in (3, 10, 7, 12):
        save_checkpoint(tmp_path, _state(step), keep_last=2)
    kept = list_checkpoints(tmp_path)
    assert [int(p.stem.split("-")[1]) for p in kept] == [10, 12]
    assert latest_checkpoint(tmp_path) == kept[-1]
    state = load_checkpoint(kept[-1], SIG)
    assert state["step"] == 12 and torch.equal(state["weights"], torch.arange(5.0) * 12)
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left behind


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_truncated_checkpoint_is_refused_with_the_file_name(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _state(5), keep_last=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupt or truncated.*delete it"):
        load_checkpoint(path, SIG)


def test_wrong_format_and_signature_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-000000001.pt"
    atomic_save({"format": 999, "step": 1}, path)
    with pytest.raises(CheckpointError, match="format version 999"):
        load_checkpoint(path)
    good = save_checkpoint(tmp_path, _state(2), keep_last=3)
    with pytest.raises(
        CheckpointError, match="num_prototypes: checkpoint has 16, config asks for 32"
    ):
        load_checkpoint(good, {**SIG, "num_prototypes": 32})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip(tmp_path: Path) -> None:
    state = rng_state()
    atomic_save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])
