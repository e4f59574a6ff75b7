"""data_prep, FFCV format: round trip through ffcv's Reader, class indices, bad files, interruption.

Each image's JPEG bytes are located through the .beton's metadata (data_ptr) and allocation
table as read by `ffcv.reader.Reader`, decoded with PIL and compared with the fixtures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastproto.data_prep import cli, prepare_fashion_mnist, prepare_imagenet, verify_output
from image_fixtures import (
    FixtureTree,
    fashion_mnist_like,
    write_bad_files,
    write_fashion_mnist_idx,
    write_imagenet_tree,
)
from PIL import Image
from test_data_prep import assert_close_jpeg, read_dali_split


def read_beton(path: Path) -> list[tuple[np.ndarray, int]]:
    """Every (RGB [H, W, 3], label) of a .beton, in row order."""
    import io

    from ffcv.reader import Reader

    reader = Reader(str(path))
    assert reader.field_names == ["image", "label"]
    sizes = dict(
        zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist(), strict=True)
    )
    raw = path.read_bytes()
    rows = []
    for row in reader.metadata:
        ptr = int(row["f0"]["data_ptr"])
        image = np.asarray(Image.open(io.BytesIO(raw[ptr : ptr + sizes[ptr]])).convert("RGB"))
        assert image.shape[:2] == (int(row["f0"]["height"]), int(row["f0"]["width"]))
        rows.append((image, int(row["f1"])))
    return rows


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return write_imagenet_tree(tmp_path_factory.mktemp("tree") / "src")


@pytest.fixture(scope="module")
def ffcv_out(tree: FixtureTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ffcv") / "out"
    assert cli.main(["imagenet", str(tree.root), "--to-ffcv", str(out)]) == 0
    return out


def test_ffcv_round_trip_pixels_and_labels(tree: FixtureTree, ffcv_out: Path) -> None:
    manifest = json.loads((ffcv_out / "manifest.json").read_text())
    assert manifest["format"] == "ffcv" and manifest["classes"] == tree.classes
    assert sorted(p.name for p in ffcv_out.iterdir()) == [
        "manifest.json",
        "train.beton",
        "val.beton",
    ]
    for split in ("train", "val"):
        want = tree.ordered(split)
        rows = read_beton(ffcv_out / f"{split}.beton")
        assert len(rows) == len(want) == manifest["splits"][split]["count"]
        for (got, label), image in zip(rows, want, strict=True):
            assert label == tree.label(image), image.path
            assert_close_jpeg(got, image.expected, (image.path, image.mode))


def test_ffcv_and_dali_agree_on_labels(tree: FixtureTree, ffcv_out: Path, tmp_path: Path) -> None:
    dali = prepare_imagenet(tree.root, tmp_path / "dali", "dali")
    ffcv_manifest = json.loads((ffcv_out / "manifest.json").read_text())
    dali_manifest = json.loads((dali / "manifest.json").read_text())
    assert ffcv_manifest["classes"] == dali_manifest["classes"]
    for split in ("train", "val"):
        from_ffcv = [lab for _, lab in read_beton(ffcv_out / f"{split}.beton")]
        assert from_ffcv == [lab for _, lab in read_dali_split(dali / split)]
        assert ffcv_manifest["splits"][split] | {"files": []} == dali_manifest["splits"][split] | {
            "files": []
        }


def test_ffcv_verify_passes_then_fails_after_a_flipped_byte(ffcv_out: Path) -> None:
    assert verify_output(ffcv_out) == []
    beton = ffcv_out / "val.beton"
    original = beton.read_bytes()
    try:
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        beton.write_bytes(bytes(data))
        problems = verify_output(ffcv_out)
        assert any("val.beton" in p and "SHA-256" in p for p in problems), problems
        assert cli.main(["verify", str(ffcv_out)]) == 1
    finally:
        beton.write_bytes(original)
    assert verify_output(ffcv_out) == []


def test_ffcv_skip_bad_leaves_them_out(tmp_path: Path) -> None:
    tree = write_imagenet_tree(tmp_path / "src", per_class={"train": 2})
    bad = write_bad_files(tmp_path / "src" / "train" / "Bag")
    out = tmp_path / "out"
    assert cli.main(["imagenet", str(tree.root), "--to-ffcv", str(out)]) == 2
    assert not (out / "manifest.json").exists() and not list(out.glob("*.beton"))
    assert cli.main(["imagenet", str(tree.root), "--to-ffcv", str(out), "--skip-bad"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bad_files"]["paths"] == sorted(str(p) for p in bad)
    rows = read_beton(out / "train.beton")
    assert [lab for _, lab in rows] == [tree.label(im) for im in tree.ordered("train")]
    for (got, _), image in zip(rows, tree.ordered("train"), strict=True):
        assert_close_jpeg(got, image.expected, image.path)
    assert not list(out.glob(".partial-*"))


@pytest.mark.slow  # three FFCV writer runs
def test_ffcv_interrupted_write_then_rerun(
    tree: FixtureTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ffcv.writer import DatasetWriter

    real_finalize = DatasetWriter.finalize
    calls = {"n": 0}

    def failing_finalize(self, allocations):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the val split, after train.beton was fully written
            raise RuntimeError("simulated interruption")
        return real_finalize(self, allocations)

    monkeypatch.setattr(DatasetWriter, "finalize", failing_finalize)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        prepare_imagenet(tree.root, out, "ffcv")
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.beton"))
    monkeypatch.setattr(DatasetWriter, "finalize", real_finalize)
    (out / ".partial-train.beton").write_bytes(b"left by a killed run")
    assert prepare_imagenet(tree.root, out, "ffcv") == out
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.beton", "val.beton"]
    assert verify_output(out) == []


@pytest.mark.slow  # two FFCV writer runs
def test_prepare_fashion_mnist_ffcv_with_limit(tmp_path: Path) -> None:
    images, labels = fashion_mnist_like(10, seed=5)
    write_fashion_mnist_idx(tmp_path / "fm", "train", images[:6], labels[:6])
    write_fashion_mnist_idx(tmp_path / "fm", "t10k", images[6:], labels[6:])
    out = prepare_fashion_mnist(tmp_path / "out", "ffcv", limit=3, source=tmp_path / "fm")
    for split, first in (("train", 0), ("val", 6)):
        rows = read_beton(out / f"{split}.beton")
        assert [lab for _, lab in rows] == labels[first : first + 3].tolist()
        for i, (got, _) in enumerate(rows):
            grey3 = np.repeat(images[first + i][..., None], 3, axis=2)
            assert_close_jpeg(got, grey3, (split, i))


def _odd_named_bad_files(folder: Path) -> list[Path]:
    """Unreadable files whose names hold a tab, a newline and bytes that are not UTF-8."""
    names = [b"bad\tname.jpg", b"bad\nname.jpg", b"bad\xff\xfename.png"]
    paths = [folder / os.fsdecode(name) for name in names]
    for path in paths:
        path.write_bytes(b"not an image")
    return paths


def test_ffcv_skip_bad_drops_files_with_odd_names(tmp_path: Path) -> None:
    tree = write_imagenet_tree(tmp_path / "src", per_class={"train": 2})
    bad = _odd_named_bad_files(tmp_path / "src" / "train" / "Bag")
    out = tmp_path / "out"
    assert cli.main(["imagenet", str(tree.root), "--to-ffcv", str(out), "--skip-bad"]) == 0
    rows = read_beton(out / "train.beton")
    assert [lab for _, lab in rows] == [tree.label(im) for im in tree.ordered("train")]
    assert all(image.shape[:2] != (1, 1) for image, _ in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bad_files"]["paths"] == sorted(str(p) for p in bad)
    train = manifest["splits"]["train"]
    assert (train["count"], train["skipped"]) == (len(tree.ordered("train")), 3)
    assert train["source_images"] == len(tree.ordered("train")) + 3
    assert verify_output(out) == []


def _put_placeholders_back(out: Path, src: Path, with_counts: bool) -> None:
    """Rewrite OUT's train.beton with every source sample, unreadable ones as the writer's 1x1
    placeholders, and its manifest entry as a converter that failed to leave them out would."""
    from fastproto.data_prep import ffcv_writer
    from fastproto.data_prep.manifest import sha256_file, split_entry
    from fastproto.data_prep.sources import scan_imagenet

    beton = out / "train.beton"
    samples = scan_imagenet(src).splits["train"]
    ffcv_writer.write_beton(beton, samples, 512, 90, 1, out / "ignored.log")
    (out / "ignored.log").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    labels, widths, heights = ffcv_writer.beton_summary(beton)
    entry = manifest["splits"]["train"]
    fresh = split_entry(manifest["classes"], labels, widths, heights, entry["files"])
    entry.update({k: fresh[k] for k in ("count", "per_class", "image_size")})
    if not with_counts:  # a manifest from before source_images / skipped were recorded
        del entry["source_images"], entry["skipped"]
    manifest["files"]["train.beton"] = sha256_file(beton)
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("with_counts", [True, False])
def test_ffcv_verify_notices_placeholders_left_in(tmp_path: Path, with_counts: bool) -> None:
    tree = write_imagenet_tree(tmp_path / "src", classes=("Bag", "Coat"), per_class={"train": 2})
    write_bad_files(tmp_path / "src" / "train" / "Bag")
    out = tmp_path / "out"
    assert cli.main(["imagenet", str(tree.root), "--to-ffcv", str(out), "--skip-bad"]) == 0
    assert verify_output(out) == []
    _put_placeholders_back(out, tree.root, with_counts)
    problems = verify_output(out)
    assert any("1x1" in p and "placeholder" in p for p in problems), problems
    assert any("source had" in p for p in problems) == with_counts, problems
    assert cli.main(["verify", str(out)]) == 1
