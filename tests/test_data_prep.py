"""data_prep, DALI format and the command line: round trip, bad input, interruption, verify.

Images are read back through DALI's own webdataset reader (CPU pipeline, device_id=None) using
the .idx files the converter wrote, and compared pixel-wise with the fixtures' expected RGB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastproto.data_prep import cli, dali_writer, verify_output
from fastproto.data_prep.fashion_mnist import CLASSES as FASHION_CLASSES
from image_fixtures import (
    FixtureTree,
    fashion_mnist_like,
    write_bad_files,
    write_fashion_mnist_idx,
    write_imagenet_tree,
)
from PIL import Image

# JPEG tolerance, in grey levels, for two generations (fixture q95, output q90 with 4:2:0 chroma
# subsampling) of 28-64 px pictures with saturated colour edges: luma keeps detail (< 3), while
# 2x2 chroma averaging on those edges costs up to ~5.5 in RGB. A channel swap, a missed rotation
# or a wrong alpha matte is off by tens.
LUMA_MAE, RGB_MAE = 3.0, 6.0


def assert_close_jpeg(got: np.ndarray, want: np.ndarray, what: object) -> None:
    assert got.shape == want.shape, what
    diff = got.astype(np.float64) - want.astype(np.float64)  # [H, W, 3]
    luma = np.abs(diff @ np.array([0.299, 0.587, 0.114])).mean()
    assert luma < LUMA_MAE and np.abs(diff).mean() < RGB_MAE, (what, luma, np.abs(diff).mean())


def read_dali_split(split_dir: Path) -> list[tuple[np.ndarray, int]]:
    """Every (RGB [H, W, 3], label) of a split, in key order, through DALI's reader + index."""
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(str(p) for p in split_dir.glob("shard-*.tar"))
    idxs = [t[: -len(".tar")] + ".idx" for t in tars]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():  # type: ignore[no-untyped-def]
        jpg, cls = fn.readers.webdataset(
            paths=tars, index_paths=idxs, ext=["jpg", "cls"], name="reader"
        )
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    rows = []
    for _ in range(p.epoch_size("reader")):
        image, cls = p.run()
        rows.append((np.array(image[0]), int(bytes(np.array(cls[0])).decode("ascii"))))
    return rows


def run_cli(*args: str | Path) -> int:
    return cli.main([str(a) for a in args])


def final_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return write_imagenet_tree(tmp_path_factory.mktemp("tree") / "src")


@pytest.fixture(scope="module")
def dali_out(tree: FixtureTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dali") / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--shard-size", "4") == 0
    return out


def test_dali_round_trip_pixels_and_labels(tree: FixtureTree, dali_out: Path) -> None:
    manifest = json.loads((dali_out / "manifest.json").read_text())
    assert manifest["classes"] == tree.classes
    for split in ("train", "val"):
        want = tree.ordered(split)
        rows = read_dali_split(dali_out / split)
        assert len(rows) == len(want) == manifest["splits"][split]["count"]
        for (got, label), image in zip(rows, want, strict=True):
            assert label == tree.label(image), image.path
            assert_close_jpeg(got, image.expected, (image.path, image.mode))


def test_dali_layout_keys_shards_and_manifest(tree: FixtureTree, dali_out: Path) -> None:
    import tarfile

    shards = sorted((dali_out / "train").glob("shard-*.tar"))
    n_train = len(tree.ordered("train"))
    assert [s.name for s in shards] == [f"shard-{i:06d}.tar" for i in range(-(-n_train // 4))]
    with tarfile.open(shards[1]) as tar:
        names = tar.getnames()
        assert names[:2] == ["000000004.cls", "000000004.jpg"]  # keys are global, not per shard
    manifest = json.loads((dali_out / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    want_counts = {c: sum(im.class_name == c for im in tree.ordered("train")) for c in tree.classes}
    assert train["per_class"] == want_counts
    sizes = [im.expected.shape[:2] for im in tree.ordered("train")]
    assert train["image_size"]["max_height"] == max(h for h, _ in sizes)
    assert train["image_size"]["min_width"] == min(w for _, w in sizes)
    assert manifest["options"]["shard_size"] == 4 and manifest["bad_files"]["count"] == 0
    assert set(manifest["files"]) == {
        p.relative_to(dali_out).as_posix() for p in final_files(dali_out) if p.suffix != ".json"
    }


def test_class_index_is_the_union_over_splits(tmp_path: Path) -> None:
    # "Coat" only in train, "Shirt" only in val: both splits must still use the sorted union.
    write_imagenet_tree(tmp_path / "src", classes=("Bag", "Coat"), per_class={"train": 1})
    write_imagenet_tree(tmp_path / "src", classes=("Bag", "Shirt"), per_class={"val": 1})
    out = tmp_path / "out"
    assert run_cli("imagenet", tmp_path / "src", "--to-dali", out) == 0
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["Bag", "Coat", "Shirt"]
    assert [lab for _, lab in read_dali_split(out / "val")] == [0, 2]
    assert [lab for _, lab in read_dali_split(out / "train")] == [0, 1]


def test_max_resolution_caps_the_short_side(tree: FixtureTree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--max-resolution", "20") == 0
    for (got, _), image in zip(read_dali_split(out / "val"), tree.ordered("val"), strict=True):
        h, w = image.expected.shape[:2]
        short, long_ = min(h, w), max(h, w)
        want_long = round(long_ * 20 / short) if short > 20 else long_
        assert sorted(got.shape[:2]) == sorted([min(short, 20), want_long])
        assert (got.shape[0] > got.shape[1]) == (h > w)  # orientation kept


def test_workers_do_not_change_the_output(
    tree: FixtureTree, dali_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert (
        run_cli("imagenet", tree.root, "--to-dali", out, "--shard-size", "4", "--workers", "2") == 0
    )
    one = json.loads((dali_out / "manifest.json").read_text())["files"]
    two = json.loads((out / "manifest.json").read_text())["files"]
    assert one == two


def test_verify_passes_then_fails_after_a_flipped_byte(tree: FixtureTree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 0
    assert verify_output(out) == [] and run_cli("verify", out) == 0
    shard = out / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_output(out)
    assert any("shard-000000.tar" in p and "SHA-256" in p for p in problems), problems
    assert run_cli("verify", out) == 1


def test_verify_reports_a_wrong_count(tree: FixtureTree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["val"]["count"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert any(p.startswith("val: count") for p in verify_output(out))


def test_rerun_is_done_unless_overwrite(
    tree: FixtureTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 0
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 0
    assert "already" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--overwrite") == 0
    assert (out / "manifest.json").stat().st_mtime_ns != stamp


def test_interrupted_write_leaves_nothing_finished(
    tree: FixtureTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_add = dali_writer._add_member
    calls = {"n": 0}

    def failing_add(tar, name, data):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 36:  # in the val split, after every train shard was written
            raise KeyboardInterrupt("simulated interruption")
        return real_add(tar, name, data)

    monkeypatch.setattr(dali_writer, "_add_member", failing_add)
    with pytest.raises(KeyboardInterrupt):
        run_cli("imagenet", tree.root, "--to-dali", out, "--shard-size", "4")
    assert not (out / "manifest.json").exists()
    assert [p for p in final_files(out) if not p.name.startswith(".partial-")] == []
    monkeypatch.setattr(dali_writer, "_add_member", real_add)
    # A hard kill would leave temporaries behind: the rerun must clear them.
    (out / "train").mkdir(exist_ok=True)
    (out / "train" / ".partial-shard-000000.tar").write_bytes(b"half a shard")
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--shard-size", "4") == 0
    assert not list(out.rglob(".partial-*"))
    assert verify_output(out) == []


def _bad_tree(tmp_path: Path) -> tuple[FixtureTree, list[Path]]:
    tree = write_imagenet_tree(tmp_path / "src", per_class={"train": 2, "val": 1})
    bad = list(write_bad_files(tmp_path / "src" / "train" / "Coat"))
    return tree, bad


def test_bad_files_stop_the_run_and_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bad = _bad_tree(tmp_path)
    out = tmp_path / "out"
    assert run_cli("imagenet", tmp_path / "src", "--to-dali", out) == 2
    err = capsys.readouterr().err
    assert "2 unreadable" in err and "--skip-bad" in err
    assert all(str(p) in err for p in bad)
    assert not out.exists() or final_files(out) == []


def test_skip_bad_writes_the_rest_and_records_the_bad(tmp_path: Path) -> None:
    tree, bad = _bad_tree(tmp_path)
    out = tmp_path / "out"
    assert run_cli("imagenet", tmp_path / "src", "--to-dali", out, "--skip-bad") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bad_files"]["count"] == 2
    assert manifest["bad_files"]["paths"] == sorted(str(p) for p in bad)
    rows = read_dali_split(out / "train")
    assert [lab for _, lab in rows] == [tree.label(im) for im in tree.ordered("train")]
    assert verify_output(out) == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("no_splits", "neither a train/ nor a val/"),
        ("no_classes", "no class folders"),
        ("empty_class", "is empty"),
        ("nested_only", "holds the folder"),
        ("nested_beside_images", "holds the folder"),
        ("unknown_ext", "unknown extension"),
        ("out_is_file", "is a file"),
        ("bad_quality", "--jpeg-quality"),
    ],
)
def test_bad_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    extra: list[str] = []
    if setup != "missing":
        write_imagenet_tree(src, classes=("Bag",), per_class={"train": 1})
    if setup == "no_splits":
        (src / "train").rename(src / "training")
    if setup == "no_classes":
        (src / "train" / "Bag" / "img_000.jpg").unlink()
        (src / "train" / "Bag").rmdir()
    if setup == "empty_class":
        (src / "train" / "Coat").mkdir()
    if setup == "unknown_ext":
        (src / "train" / "Bag" / "notes.txt").write_text("x")
    if setup.startswith("nested"):  # <class>/<sub>/<image>: refused, naming the sub-folder
        (src / "train" / "Bag" / "sub").mkdir()
        (src / "train" / "Bag" / "img_000.jpg").rename(src / "train" / "Bag" / "sub" / "a.jpg")
        if setup == "nested_beside_images":
            write_imagenet_tree(src, classes=("Bag",), per_class={"train": 1})
    if setup == "out_is_file":
        out.write_text("not a folder")
    if setup == "bad_quality":
        extra = ["--jpeg-quality", "0"]
    assert run_cli("imagenet", src, "--to-dali", out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err, err
    if setup == "unknown_ext":
        assert "notes.txt" in err
    if setup.startswith("nested"):
        assert "sub" in err
    if setup != "out_is_file":
        assert not out.exists()


def test_folder_command_writes_one_train_split(tree: FixtureTree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("folder", tree.root / "val", "--to-dali", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["train"] and manifest["dataset"] == "folder"
    labels = [lab for _, lab in read_dali_split(out / "train")]
    assert labels == [tree.label(im) for im in tree.ordered("val")]


def test_fashion_mnist_limit_from_idx_files(tmp_path: Path) -> None:
    images, labels = fashion_mnist_like(12, seed=3)
    source = tmp_path / "fm"
    write_fashion_mnist_idx(source, "train", images[:8], labels[:8])
    write_fashion_mnist_idx(source, "t10k", images[8:], labels[8:])
    out = tmp_path / "out"
    assert run_cli("fashion-mnist", "--source", source, "--to-dali", out, "--limit", "5") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == FASHION_CLASSES and manifest["options"]["limit"] == 5
    assert manifest["splits"]["train"]["count"] == 5 and manifest["splits"]["val"]["count"] == 4
    for split, first in (("train", 0), ("val", 8)):
        rows = read_dali_split(out / split)
        for i, (got, label) in enumerate(rows):
            assert label == labels[first + i]
            assert_close_jpeg(got, np.repeat(images[first + i][..., None], 3, axis=2), (split, i))


def test_fashion_mnist_missing_files_name_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli("fashion-mnist", "--source", tmp_path / "nowhere", "--to-dali", tmp_path / "o")
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_debian_files_with_limit(tmp_path: Path) -> None:
    from image_fixtures import read_idx_gz

    out = tmp_path / "out"
    assert run_cli("fashion-mnist", "--to-dali", out, "--limit", "3") == 0
    want = read_idx_gz(Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"))[:3]
    assert [lab for _, lab in read_dali_split(out / "val")] == want.tolist()
    assert verify_output(out) == []


def test_png_sources_are_not_trusted_to_be_rgb(tmp_path: Path) -> None:
    # A 16-bit PNG whose values all exceed 255 must not saturate to white.
    src = tmp_path / "src" / "train" / "Bag"
    src.mkdir(parents=True)
    v16 = np.full((8, 8), 40000, dtype=np.uint16)
    Image.frombytes("I;16", (8, 8), v16.astype("<u2").tobytes()).save(src / "a.png")
    out = tmp_path / "out"
    assert run_cli("imagenet", tmp_path / "src", "--to-dali", out) == 0
    ((got, _),) = read_dali_split(out / "train")
    assert np.abs(got.astype(int) - (40000 >> 8)).max() <= 2


def test_cut_before_the_manifest_is_not_finished(
    tree: FixtureTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastproto.data_prep import convert

    def no_manifest(out: Path, manifest: dict) -> None:  # type: ignore[type-arg]
        raise OSError("disk full")

    out = tmp_path / "out"
    monkeypatch.setattr(convert, "write_manifest", no_manifest)
    with pytest.raises(OSError, match="disk full"):
        run_cli("imagenet", tree.root, "--to-dali", out)
    assert list(out.glob("*/shard-*.tar"))  # renamed, but without a manifest
    assert "no complete manifest" in verify_output(out)[0]
    monkeypatch.undo()
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 0  # redone, not "already done"
    assert verify_output(out) == []


def _user_files(out: Path) -> dict[Path, bytes]:
    """Files a user keeps in OUT that look like data_prep's output; written, returned."""
    files = {
        out / "imagenet_precious.beton": b"a user's own dataset",
        out / "old" / "shard-000000.tar": b"a user's own shard",
        out / "old" / "shard-000000.idx": b"v1.2 0\n",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_out_with_files_not_written_by_data_prep_is_refused(
    tree: FixtureTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    user = _user_files(out)
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "--overwrite" in err and "imagenet_precious.beton" in err
    assert {p: p.read_bytes() for p in user} == user
    assert final_files(out) == sorted(user)


def test_overwrite_deletes_only_what_data_prep_wrote(tree: FixtureTree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--shard-size", "2") == 0
    first = set(json.loads((out / "manifest.json").read_text())["files"])
    user = _user_files(out)
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--shard-size", "4", "--overwrite") == 0
    second = set(json.loads((out / "manifest.json").read_text())["files"])
    assert first - second  # fewer shards: the old run's extra shards must be gone
    assert {p: p.read_bytes() for p in user} == user
    left = {p.relative_to(out).as_posix() for p in final_files(out) if p not in user}
    assert left == second | {"manifest.json"}
    assert verify_output(out) == []


def test_overwrite_refuses_a_foreign_file_where_an_output_goes(
    tree: FixtureTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "shard-000000.tar").write_bytes(b"a user's own shard")
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--overwrite") == 2
    assert "not written by data_prep" in capsys.readouterr().err
    assert (out / "train" / "shard-000000.tar").read_bytes() == b"a user's own shard"


@pytest.mark.parametrize("change", ["source", "option", "format"])
def test_finished_out_with_other_settings_is_refused(
    tree: FixtureTree, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    out = tmp_path / "out"
    assert run_cli("imagenet", tree.root, "--to-dali", out) == 0
    before = (out / "manifest.json").read_bytes()
    args: list[str | Path] = ["imagenet", tree.root, "--to-dali", out]
    if change == "source":
        args[1] = write_imagenet_tree(tmp_path / "other", per_class={"train": 1}).root
    if change == "option":
        args += ["--jpeg-quality", "80"]
    if change == "format":
        args[2] = "--to-ffcv"
    capsys.readouterr()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "another OUT" in err, err
    assert (out / "manifest.json").read_bytes() == before
    # The same request (the number of workers does not change the output) is still done.
    assert run_cli("imagenet", tree.root, "--to-dali", out, "--workers", "2") == 0
    assert "already holds this conversion" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
