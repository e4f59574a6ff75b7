"""Checkpoint files: atomic write, rotation, RNG round trip, and refusal of bad files."""

from __future__ import annotations

import random
import zipfile
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
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupt or truncated") as info:
        load_checkpoint(path, SIG)
    # outside a resume (eval, prototypes) there is nothing to delete, and the caller's advice wins
    assert "another checkpoint" in str(info.value) and "delete" not in str(info.value)
    with pytest.raises(CheckpointError, match="truncated.*; delete it and rerun$"):
        load_checkpoint(path, SIG, advice="delete it and rerun")


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


def _realistic_state(step: int) -> dict:
    """Nested dicts, strings, ints and tensors, like the trainer's record (a fat pickle part)."""
    layers = {f"blocks.{i}.{name}": torch.randn(4, 3) for i in range(6) for name in ("w", "b")}
    return _state(step) | {
        "student": layers,
        "teacher": {k: v.clone() for k, v in layers.items()},
        "optimizer": {
            "state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)} for i in range(4)},
            "param_groups": [{"lr": 1e-3, "params": [0, 1]}],
        },
        "config": {"optim": {"lr": 2e-3, "batch_size": 8}, "run": {"out": "runs/x"}},
        "epoch": 1,
        "batch_in_epoch": 2,
    }


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def test_every_single_bit_flip_is_refused(tmp_path: Path) -> None:
    """torch does not check the zip CRCs, and a flip in the pickle part used to escape as a raw
    IndexError or KeyError: every flipped bit, anywhere in the file, is one CheckpointError."""
    path = save_checkpoint(tmp_path, _realistic_state(5), keep_last=3)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:  # the pickle part: where flips escaped as raw errors
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    pickle_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    rng = random.Random(0)
    bits = [rng.randrange(len(data) * 8) for _ in range(150)]
    bits += [
        rng.randrange(pickle_start * 8, (pickle_start + info.compress_size) * 8) for _ in range(50)
    ]
    bad = tmp_path / "checkpoint-000000006.pt"
    loaded = []
    for bit in bits:
        bad.write_bytes(_flip(data, bit))
        try:
            load_checkpoint(bad, SIG)
        except CheckpointError as err:
            assert str(bad) in str(err)
        else:
            loaded.append(bit)
    assert loaded == []


def test_a_checkpoint_without_its_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-000000001.pt"
    torch.save({"format": 1, "step": 1, "signature": SIG}, path)  # a plain torch file
    with pytest.raises(CheckpointError, match="no checksum"):
        load_checkpoint(path, SIG)
    path.write_text("step = 1\n")  # a text file
    with pytest.raises(CheckpointError, match=f"{path}.*(no checksum|truncated)"):
        load_checkpoint(path)


def test_state_holding_nan_is_never_written(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1), keep_last=3)
    state = _state(2) | {"student": {"w": torch.tensor([1.0, float("nan")]), "n": torch.ones(2)}}
    with pytest.raises(
        FloatingPointError, match=r"checkpoint-000000002.pt was not written: student.w"
    ):
        save_checkpoint(tmp_path, state, keep_last=3)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000000001.pt"]
