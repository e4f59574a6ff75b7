"""The trainer's refusals: what it never applies, writes or accepts, and what it says instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import prepare_data, tiny

from fastproto.train.checkpoint import (
    CheckpointError,
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from fastproto.train.loop import train
from fastproto.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("fmnist"))


def test_a_non_finite_gradient_is_never_applied_or_checkpointed(data: Path, tmp_path: Path) -> None:
    """At lr 1e6 the gradient goes NaN while the loss is still finite: that step must not be
    applied, and no checkpoint (the one a rerun resumes from) may hold NaN."""
    with pytest.raises(FloatingPointError, match=r"gradient norm is (nan|inf)") as info:
        train(tiny(data, tmp_path, "optim.lr=1e6", "run.max_steps=8"))
    saved = [load_checkpoint(p) for p in list_checkpoints(tmp_path)]
    assert saved, "the run should have checkpointed the steps before the divergence"
    for record in saved:
        for part in ("student", "teacher"):
            assert all(torch.isfinite(v).all() for v in record[part].values()), record["step"]
    message = str(info.value)
    assert f"newest good checkpoint is {latest_checkpoint(tmp_path)}" in message
    assert "--resume-from" in message


def test_resume_from_a_named_checkpoint_continues_it(data: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    train(tiny(data, first, "run.max_steps=4"))
    named = list_checkpoints(first)[1]  # step 2
    before = (first / "config.toml").read_text()
    with pytest.raises(CheckpointError, match="holds newer checkpoints.*new --out"):
        train(tiny(data, first, "run.max_steps=5", "optim.lr=1e-3"), resume_from=str(named))
    assert (first / "config.toml").read_text() == before  # refused: nothing rewritten
    result = train(tiny(data, second, "run.max_steps=4"), resume_from=str(named))
    assert result.step == 4
    assert [r["step"] for r in read_metrics(second / "metrics.jsonl")] == [3, 4]
    want = load_checkpoint(list_checkpoints(first)[-1])["student"]
    got = load_checkpoint(latest_checkpoint(second))["student"]  # type: ignore[arg-type]
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="--resume-from .*no such file"):
        train(tiny(data, second, "run.max_steps=5"), resume_from=str(first / "nothing.pt"))


def test_a_refused_resume_writes_nothing(data: Path, tmp_path: Path) -> None:
    train(tiny(data, tmp_path, "run.max_steps=1"))
    before = (tmp_path / "config.toml").read_text()
    with pytest.raises(CheckpointError, match="num_prototypes: checkpoint has 32"):
        train(tiny(data, tmp_path, "run.max_steps=2", "head.num_prototypes=48"))
    assert (tmp_path / "config.toml").read_text() == before
    missing = tmp_path / "typo"
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        train(tiny(data, missing, "run.max_steps=2"), require_resume=True)
    assert not missing.exists()


def test_changing_the_batch_size_or_the_data_on_resume_is_refused(
    data: Path, tmp_path: Path
) -> None:
    """The position inside the epoch and the schedules are counted in batches of the saved size."""
    from fastproto.data_prep.prepare import prepare_fashion_mnist

    train(tiny(data, tmp_path, "run.max_steps=2"))
    with pytest.raises(CheckpointError, match="batch_size: checkpoint has 8, config asks for 4"):
        train(tiny(data, tmp_path, "run.max_steps=4", "optim.batch_size=4"))
    smaller = prepare_fashion_mnist(tmp_path / "smaller", "ffcv", limit=16)  # 2 batches per epoch
    with pytest.raises(CheckpointError, match="3 steps per epoch.*give 2"):
        train(tiny(smaller, tmp_path, "run.max_steps=4"))


@pytest.mark.parametrize(
    ("saved", "asked"), [("probability", "logit"), ("none", "sinkhorn"), ("logit", "none")]
)
def test_switching_the_centering_on_resume_is_refused(
    data: Path, tmp_path: Path, saved: str, asked: str
) -> None:
    train(tiny(data, tmp_path, "run.max_steps=1", f"method.centering={saved!r}"))
    with pytest.raises(CheckpointError, match=f"centering: checkpoint has '{saved}'"):
        train(tiny(data, tmp_path, "run.max_steps=2", f"method.centering={asked!r}"))


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_a_state_dict_that_does_not_fit_is_one_clear_error(
    data: Path, tmp_path: Path, change: str
) -> None:
    train(tiny(data, tmp_path, "run.max_steps=1"))
    path = latest_checkpoint(tmp_path)
    assert path is not None
    record = load_checkpoint(path)
    name = next(iter(record["student"]))
    if change == "missing":
        del record["student"][name]
    elif change == "extra":
        record["cls_centering"]["unexpected"] = torch.zeros(3)
    else:
        record["teacher"][name] = torch.zeros(1, 2, 3)
    atomic_save(record, path)  # a whole file with a valid checksum, just not this network
    with pytest.raises(CheckpointError, match=rf"{path.name} does not fit the state"):
        train(tiny(data, tmp_path, "run.max_steps=2"))


def test_more_workers_than_cores_still_trains(data: Path, tmp_path: Path) -> None:
    """FFCV refuses more threads than cores ("The number of threads must be between 1 and N")."""
    result = train(tiny(data, tmp_path, "run.max_steps=1", "data.workers=4096"))
    assert result.step == 1


def test_a_data_set_smaller_than_one_batch_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has 24 images, fewer than one batch.*--batch-size"):
        train(tiny(data, tmp_path, "optim.batch_size=32"))
    assert not tmp_path.joinpath("config.toml").exists()


def test_resuming_an_older_checkpoint_rewrites_no_step_twice(data: Path, tmp_path: Path) -> None:
    """metrics.jsonl held the steps past the checkpoint twice after every such resume; orphan
    checkpoint temporaries of a crashed write stayed forever."""
    import os

    train(tiny(data, tmp_path, "run.max_steps=4"))
    for path in list_checkpoints(tmp_path)[2:]:  # as if the run had died after step 2's save
        path.unlink()
    orphan = tmp_path / ".checkpoint-000000003.pt.k2j_x9.tmp"
    orphan.write_bytes(b"half a checkpoint")
    os.utime(orphan, (1, 1))  # older than the newest checkpoint
    other = tmp_path / ".notes.tmp"  # not ours: never touched
    other.write_text("mine")
    os.utime(other, (1, 1))
    train(tiny(data, tmp_path, "run.max_steps=4"))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", "epoch")] == [3]
    assert not orphan.exists() and other.read_text() == "mine"


def test_eval_results_print_as_a_readable_line() -> None:
    from fastproto.train.reports import describe_result

    line = describe_result("knn", {"top1_k10": 0.4975, "top1_k20": 0.495})
    assert line == "kNN top-1: k=10: 49.8%, k=20: 49.5%"
    few = describe_result("fewshot", {"1_shot": {"mean": 0.25, "std": 0.01}})
    assert few == "few-shot top-1: 1_shot: 25.0% +- 1.0"
