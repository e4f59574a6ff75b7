"""What `fastproto` prints when a run cannot go on: one line saying what is wrong and what to
do, and exit status 2 -- never a raw traceback for a diverged run, a full disk, an unwritable
directory, an impossible K, a foreign .beton or a file that is no training checkpoint."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from tiny_run import TINY, prepare_data

from fastproto.cli import main
from fastproto.train.checkpoint import atomic_save


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("fmnist"))


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()  # what came before (data preparation's progress bars)
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "demo", "--data", str(data), "--out", str(out), *TINY, *extra]


def test_a_diverged_run(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, train_argv(data, tmp_path, "optim.lr=1e6", "run.max_steps=8"))
    assert "is nan" in err or "is inf" in err
    assert "--resume-from" in err and "newest good checkpoint" in err


def test_an_unwritable_run_directory(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = one_line_error(capsys, train_argv(data, blocker / "run", "run.max_steps=1"))
    assert "a-file" in err and "check the path" in err


def test_a_full_disk_during_a_checkpoint(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastproto.train.checkpoint as ckpt

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full)
    err = one_line_error(capsys, train_argv(data, tmp_path, "run.max_steps=2"))
    assert "No space left on device while writing a checkpoint" in err
    assert "free disk space" in err
    assert not list(tmp_path.glob(".checkpoint-*.tmp"))  # the half-written file is gone


def test_a_k_that_cannot_fit(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_line_error(capsys, train_argv(data, tmp_path, "head.num_prototypes=1000000000"))
    assert "head.num_prototypes=1000000000" in err and "GiB" in err and "lower --K" in err
    assert not (tmp_path / "config.toml").exists()


def test_a_beton_with_other_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ffcv.fields import FloatField, IntField
    from ffcv.writer import DatasetWriter

    class Numbers:
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> tuple[int, float]:
            return i, float(i)

    (tmp_path / "data").mkdir()
    writer = DatasetWriter(
        str(tmp_path / "data" / "train.beton"), {"x": IntField(), "y": FloatField()}, num_workers=1
    )
    writer.from_indexed_dataset(Numbers())
    err = one_line_error(capsys, train_argv(tmp_path / "data", tmp_path / "run"))
    assert "has the fields x (IntField), y (FloatField)" in err and "data_prep" in err


@pytest.mark.parametrize("content", ["text", "no-config"])
def test_eval_and_prototypes_on_a_file_that_is_no_training_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "checkpoint-000000001.pt"
    if content == "text":
        path.write_text("not a checkpoint\n")
    else:
        atomic_save({"format": 2, "step": 1, "weights": torch.zeros(3)}, path)
    for argv in (
        ["prototypes", str(path)],
        ["eval", "knn", "--checkpoint", str(path), "--data", str(tmp_path)],
    ):
        err = one_line_error(capsys, argv)
        assert str(path) in err
        assert "delete it" not in err and "weights_only" not in err
