"""OUT/manifest.json: what was written, from what, with which options, and every file's SHA-256.

Schema (keys in this order):
    complete      true (the manifest is written last, so its presence means the run finished)
    tool          "fastproto.data_prep";  tool_version: fastproto's version
    format        "ffcv" | "dali"
    dataset       "imagenet" | "folder" | "fashion-mnist";  source: absolute source path
    options       max_resolution, jpeg_quality, shard_size (dali), workers, skip_bad, limit
    classes       class names, position = label
    splits        {split: {count, per_class: {name: count}, image_size: {min_width, max_width,
                   min_height, max_height} (after the short-side cap), files: [relative paths],
                   source_images: images found in the source, skipped: how many of them were
                   left out as unreadable (count = source_images - skipped)}}
    bad_files     {count, paths: [...], reasons: {path: error}}
    files         {relative path: sha256 hex} for every output file except the manifest
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import MANIFEST_NAME, write_text_atomic

TOOL = "fastproto.data_prep"


def tool_version() -> str:
    from fastproto import __version__

    return str(__version__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_entry(
    classes: Sequence[str],
    labels: Sequence[int],
    widths: Sequence[int],
    heights: Sequence[int],
    files: Sequence[str],
) -> dict[str, Any]:
    """Manifest entry of one split from the labels and sizes in output order."""
    per_class = dict.fromkeys(classes, 0)
    for label in labels:
        per_class[classes[int(label)]] += 1
    size = {
        "min_width": int(min(widths)) if len(widths) else 0,
        "max_width": int(max(widths)) if len(widths) else 0,
        "min_height": int(min(heights)) if len(heights) else 0,
        "max_height": int(max(heights)) if len(heights) else 0,
    }
    return {"count": len(labels), "per_class": per_class, "image_size": size, "files": list(files)}


def build_manifest(
    *,
    fmt: str,
    dataset: str,
    source: str,
    options: dict[str, Any],
    classes: Sequence[str],
    splits: dict[str, dict[str, Any]],
    bad: dict[str, str],
    out: Path,
) -> dict[str, Any]:
    """Assemble the manifest; hashes every file the splits list (paths relative to out)."""
    files = [f for entry in splits.values() for f in entry["files"]]
    return {
        "complete": True,
        "tool": TOOL,
        "tool_version": tool_version(),
        "format": fmt,
        "dataset": dataset,
        "source": source,
        "options": options,
        "classes": list(classes),
        "splits": splits,
        "bad_files": {
            "count": len(bad),
            "paths": sorted(bad),
            "reasons": dict(sorted(bad.items())),
        },
        "files": {f: sha256_file(out / f) for f in files},
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest if OUT holds a complete one, else None (missing, unreadable or partial)."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        return None
    return manifest


def write_pending_manifest(out: Path, files: Sequence[str]) -> None:
    """Before the outputs get their final names: a manifest that is not complete, naming
    them, so that a run cut off during or after the renames leaves files known to be ours."""
    pending = {"complete": False, "tool": TOOL, "files": {f: None for f in files}}
    write_text_atomic(out / MANIFEST_NAME, json.dumps(pending, indent=2) + "\n")
