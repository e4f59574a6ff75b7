"""The trainer end to end on a few Fashion-MNIST images: backends, methods, exact resume, errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_NETWORK

from fastproto.cli import main
from fastproto.config import from_dict, load_config
from fastproto.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from fastproto.train.loop import train
from fastproto.train.metrics import read_metrics

TINY = [*TINY_NETWORK, "run.knn_every_epochs=0", "method.name='ibot'"]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fashion-MNIST, 24 images per split, in each layout the loaders read (the folder tree:
    mixed modes, formats and sizes, 3 classes x 8 train images)."""
    from fastproto.data_prep.prepare import prepare_fashion_mnist
    from image_fixtures import write_imagenet_tree

    root = tmp_path_factory.mktemp("fmnist")
    dirs = {fmt: prepare_fashion_mnist(root / fmt, fmt, limit=24) for fmt in ("ffcv", "dali")}
    dirs["folder"] = write_imagenet_tree(root / "folder", per_class={"train": 8, "val": 2}).root
    return dirs


def tiny_config(data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config("demo", [f"data.path={str(data)!r}", f"run.out={str(out)!r}", *TINY, *extra])


@pytest.mark.parametrize("backend", ["ffcv", "dali", "folder"])
@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_a_few_steps_end_to_end(
    data_dirs: dict[str, Path], tmp_path: Path, backend: str, method: str
) -> None:
    config = tiny_config(
        data_dirs[backend],
        tmp_path,
        f"data.backend={backend!r}",
        f"method.name={method!r}",
        "run.max_steps=2",
    )
    result = train(config)
    steps = read_metrics(tmp_path / "metrics.jsonl")
    assert result.step == 2 and [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("loss", "dino", "lr"))
        assert ("ibot" in row) == (method == "ibot")  # only iBOT has the patch loss
        assert 0 < row["teacher_entropy"] <= torch.log(torch.tensor(32.0)) + 1e-6
        for key in ("teacher_entropy_per_sample", "student_entropy_per_sample"):
            assert 0 < row[key] <= torch.log(torch.tensor(32.0)) + 1e-6
        assert row["teacher_logit_std"] > 0 and row["student_logit_std"] > 0
    assert steps[0]["lr"] == 0.0 and steps[1]["lr"] > 0  # linear warm-up from zero
    saved = load_checkpoint(latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (2, 0, 2)
    resolved = from_dict(tomllib.loads((tmp_path / "config.toml").read_text()))
    assert resolved == config  # the run directory holds the resolved config


def test_me_max_joins_the_loss_without_centring(data_dirs: dict[str, Path], tmp_path: Path) -> None:
    config = tiny_config(
        data_dirs["ffcv"],
        tmp_path,
        "method.name='dino'",
        "method.centering='none'",
        "method.me_max=0.5",
        "method.koleo_data=0.2",
        "run.max_steps=2",
    )
    train(config)
    for row in read_metrics(tmp_path / "metrics.jsonl"):
        # -H(mean prediction) lies in [-log K, 0]; the total is the weighted sum of the terms
        assert -torch.log(torch.tensor(32.0)) - 1e-6 <= row["me_max"] <= 0
        want = row["dino"] + 0.1 * row["koleo_proto"] + 0.2 * row["koleo_data"]
        want += 0.5 * row["me_max"]
        assert row["loss"] == pytest.approx(want, rel=1e-5)


def _params(path: Path) -> dict[str, torch.Tensor]:
    saved = load_checkpoint(path)
    return {f"s.{k}": v for k, v in saved["student"].items()} | {
        f"t.{k}": v for k, v in saved["teacher"].items()
    }


def test_resume_follows_the_uninterrupted_run(data_dirs: dict[str, Path], tmp_path: Path) -> None:
    """4 steps in a row vs 2 steps, stop, resume for 2 (crossing an epoch boundary: 3 per epoch)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_config(data_dirs["ffcv"], whole, "run.max_steps=4", "run.knn_every_epochs=1"))
    train(tiny_config(data_dirs["ffcv"], split, "run.max_steps=2"))
    train(tiny_config(data_dirs["ffcv"], split, "run.max_steps=4"))
    a = read_metrics(whole / "metrics.jsonl")
    b = read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "dino", "ibot", "koleo_proto", "lr", "teacher_temp"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    pa, pb = _params(latest_checkpoint(whole)), _params(latest_checkpoint(split))  # type: ignore[arg-type]
    for name, value in pa.items():
        torch.testing.assert_close(pb[name], value, rtol=1e-5, atol=1e-6, msg=name)
    saved = load_checkpoint(latest_checkpoint(split))  # type: ignore[arg-type]
    assert (saved["epoch"], saved["batch_in_epoch"]) == (1, 1)  # 3 batches per epoch
    (epoch,) = read_metrics(whole / "metrics.jsonl", kind="epoch")  # written after step 3
    assert epoch["step"] == 3 and 1 <= epoch["unique_prototypes"] <= 32
    assert sum(i * n for i, n in enumerate(epoch["redundancy_histogram"])) == 32  # sum r_m = K
    assert all(0.0 <= acc <= 1.0 for acc in epoch["knn_top1"].values())
    # the prototypes moved at most a little in 3 warm-up steps, and no two are near each other
    assert 0.0 <= epoch["prototype_movement"] < 0.5
    quantiles = list(epoch["nn_distance_quantiles"].values())
    assert quantiles == sorted(quantiles) and quantiles[0] > 0.025


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_input_gives_clear_errors(
    data_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--config", "demo", "--out", str(tmp_path / "run"), *TINY]
    err = _cli_error(capsys, [*base, "--data", str(tmp_path / "missing")])
    assert "missing does not exist" in err
    data = ["--data", str(data_dirs["ffcv"])]
    # TINY's key=value items come after the flags and win, so these use key=value too
    err = _cli_error(capsys, [*base, *data, "head.num_prototypes=0"])
    assert "head.num_prototypes must be positive" in err
    err = _cli_error(capsys, [*base, *data, "model.arch=vit_gigantic"])
    assert "unknown model.arch 'vit_gigantic'" in err
    err = _cli_error(capsys, [*base, *data, "optim.learning_rate=1"])
    assert "unknown config key 'optim.learning_rate'" in err and "did you mean" not in err
    err = _cli_error(capsys, [*base, *data, "optim.lrr=1"])
    assert "did you mean 'optim.lr'" in err
    err = _cli_error(capsys, [*base, *data, "--resume"])
    assert "no checkpoint-*.pt" in err


def test_corrupt_or_incompatible_checkpoint_is_refused(
    data_dirs: dict[str, Path], tmp_path: Path
) -> None:
    train(tiny_config(data_dirs["ffcv"], tmp_path, "run.max_steps=1"))
    with pytest.raises(ValueError, match="does not match this configuration.*num_prototypes"):
        train(tiny_config(data_dirs["ffcv"], tmp_path, "run.max_steps=2", "head.num_prototypes=48"))
    path = list_checkpoints(tmp_path)[-1]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{path.name} is corrupt or truncated"):
        train(tiny_config(data_dirs["ffcv"], tmp_path, "run.max_steps=2"))


def test_demo_reports_knn_after_training_and_at_initialisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastproto.train.demo import run_demo

    monkeypatch.setenv("FASTPROTO_CACHE", str(tmp_path / "cache"))
    config = load_config("demo", [f"run.out={str(tmp_path / 'run')!r}", *TINY, "run.max_steps=2"])
    summary = run_demo(config, images=40)
    assert (tmp_path / "cache" / "fashion-mnist-ffcv-40" / "manifest.json").exists()
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["data"]["path"].endswith("fashion-mnist-ffcv-40")
    keys = ("knn_top1", "knn_top1_student", "knn_top1_at_init", "knn_top1_raw_pixels")
    for key in keys:
        assert set(summary[key]) == {"10", "20"}
        assert all(0.0 <= v <= 1.0 for v in summary[key].values())
    assert summary["knn_top1_raw_pixels"] != summary["knn_top1_at_init"]  # different features
    assert summary["step"] == 2 and 1 <= summary["unique_prototypes"] <= 32
    out = capsys.readouterr().out
    for label in ("raw pixels", "network at initialisation", "trained student", "trained teacher"):
        assert f"  {label} " in out
    assert f"unique prototypes M = {summary['unique_prototypes']} of K = 32" in out
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
