"""`data_prep verify OUT`: re-read every output and compare it with manifest.json.

Checks, each reported as one line naming the file and what differs:
  - every file the manifest lists exists and has the recorded SHA-256; no unlisted
    `<split>/shard-*` files (a DALI reader would take them in) and no `.partial-*` leftovers
    (other files, kept beside the output with --overwrite, are not the output's);
  - FFCV: the .beton opens with ffcv's Reader, has fields (image, label), and every image's JPEG
    bytes (located through the allocation table) decode to the recorded width x height;
  - DALI: every tar holds `<key>.cls` + `<key>.jpg` pairs with keys counting up from
    shard * shard_size, labels parse as integers, JPEGs decode, and the .idx lines equal
    the (ext, data offset, size, name) of the tar members;
  - per split: image count, per-class counts and min/max sizes equal the manifest's, the count
    is the source's image count less the skipped files, and where files were skipped no image
    is 1x1 (the placeholder FFCV's writer holds for an unreadable file until it is left out).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .atomic import find_temporaries
from .dali_writer import INDEX_VERSION, sample_key
from .manifest import read_manifest, sha256_file, split_entry

# (labels, widths, heights) in output order, read back from the files.
_Seen = tuple[list[int], list[int], list[int]]


def _decode_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def _read_beton(path: Path, problems: list[str]) -> _Seen:
    from fastproto.data.ffcv_threads import import_ffcv

    import_ffcv()
    from ffcv.reader import Reader

    reader = Reader(str(path))
    if reader.field_names != ["image", "label"]:
        problems.append(f"{path}: fields {reader.field_names}, expected ['image', 'label']")
        return [], [], []
    meta = reader.metadata  # [N] structured: f0 = image (mode, width, height, data_ptr), f1 = label
    sizes = dict(
        zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist(), strict=True)
    )
    data = np.memmap(path, dtype=np.uint8, mode="r")
    labels, widths, heights = [], [], []
    for i in range(len(meta)):
        ptr = int(meta["f0"]["data_ptr"][i])
        w, h = int(meta["f0"]["width"][i]), int(meta["f0"]["height"][i])
        try:
            got = _decode_size(bytes(data[ptr : ptr + sizes[ptr]]))
        except Exception as exc:  # noqa: BLE001 - report any decode failure
            problems.append(f"{path}: sample {i} does not decode ({type(exc).__name__}: {exc})")
            continue
        if got != (w, h):
            problems.append(f"{path}: sample {i} decodes to {got}, metadata says {(w, h)}")
        labels.append(int(meta["f1"][i]))
        widths.append(w)
        heights.append(h)
    return labels, widths, heights


def _read_shard(tar_path: Path, first_key: int, seen: _Seen, problems: list[str]) -> None:
    """Check one tar + idx pair and append its labels and sizes to `seen`."""
    idx_lines = tar_path.with_suffix(".idx").read_text("ascii").splitlines()
    index_rows: list[str] = []
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for j in range(0, len(members), 2):
            pair = members[j : j + 2]
            key = sample_key(first_key + j // 2)
            names = [m.name for m in pair]
            if names != [f"{key}.cls", f"{key}.jpg"]:
                problems.append(f"{tar_path}: members {names}, expected {key}.cls, {key}.jpg")
                return
            blobs = [tar.extractfile(m).read() for m in pair]  # type: ignore[union-attr]
            index_rows.append(
                " ".join(
                    f"{m.name.split('.', 1)[1]} {m.offset_data} {m.size} {m.name}" for m in pair
                )
            )
            try:
                size = _decode_size(blobs[1])
                label = int(blobs[0].decode("ascii"))
            except Exception as exc:  # noqa: BLE001 - report any decode failure
                problems.append(f"{tar_path}: {key} does not decode ({type(exc).__name__}: {exc})")
                continue
            seen[0].append(label)
            seen[1].append(size[0])
            seen[2].append(size[1])
    if idx_lines != [f"{INDEX_VERSION} {len(index_rows)}", *index_rows]:
        problems.append(f"{tar_path.with_suffix('.idx')}: index does not match the tar members")


def _check_files(out: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    listed = manifest.get("files", {})
    for rel, digest in listed.items():
        path = out / rel
        if not path.is_file():
            problems.append(f"{path}: listed in manifest.json but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: SHA-256 differs from manifest.json")
    owned = [p for split in manifest.get("splits", {}) for p in (out / split).glob("shard-*")]
    for path in sorted(owned):
        if path.relative_to(out).as_posix() not in listed:
            problems.append(f"{path}: output file not listed in manifest.json")
    for path in find_temporaries(out):
        problems.append(f"{path}: leftover temporary from an interrupted run")


def _read_split(out: Path, manifest: dict[str, Any], split: str, problems: list[str]) -> _Seen:
    files = manifest["splits"][split]["files"]
    if manifest["format"] == "ffcv":
        return _read_beton(out / files[0], problems)
    seen: _Seen = ([], [], [])
    shard_size = int(manifest["options"]["shard_size"])
    for n, rel in enumerate(f for f in files if f.endswith(".tar")):
        _read_shard(out / rel, n * shard_size, seen, problems)
    return seen


def verify_output(out: Path) -> list[str]:
    """Problems found in OUT (empty when everything matches manifest.json)."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        return [f"{out}: no complete manifest.json (conversion unfinished or not run)"]
    problems: list[str] = []
    _check_files(out, manifest, problems)
    if problems:
        return problems  # reading damaged or missing files would only repeat the finding
    classes = manifest["classes"]
    for split, recorded in manifest["splits"].items():
        labels, widths, heights = _read_split(out, manifest, split, problems)
        if any(not 0 <= lab < len(classes) for lab in labels):
            problems.append(f"{split}: labels outside 0..{len(classes) - 1}")
            continue
        found = split_entry(classes, labels, widths, heights, recorded["files"])
        for key in ("count", "per_class", "image_size"):
            if found[key] != recorded[key]:
                problems.append(
                    f"{split}: {key} is {found[key]}, manifest.json says {recorded[key]}"
                )
        skipped = recorded.get("skipped", manifest["bad_files"]["count"])
        problems.extend(_skipped_problems(split, recorded, skipped, widths, heights))
    return problems


def _skipped_problems(
    split: str, recorded: dict[str, Any], skipped: int, widths: list[int], heights: list[int]
) -> list[str]:
    """Signs that unreadable files were not left out: a count that does not add up to the
    source's, or 1x1 placeholders in a split that skipped files."""
    problems = []
    source = recorded.get("source_images")  # absent in manifests of older versions
    if source is not None and len(widths) != source - skipped:
        problems.append(
            f"{split}: {len(widths)} images, but the source had {source} of which {skipped} "
            "were skipped as unreadable"
        )
    if skipped:
        tiny = [i for i, (w, h) in enumerate(zip(widths, heights, strict=True)) if w == h == 1]
        if tiny:
            problems.append(
                f"{split}: sample(s) {tiny[:10]} are 1x1 images, the placeholder of an "
                f"unreadable file, though {skipped} file(s) are listed as skipped; "
                "rerun the conversion with --overwrite"
            )
    return problems
