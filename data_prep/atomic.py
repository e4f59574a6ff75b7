"""Crash-safe output: temporary names, fsync + os.replace, and clean-up of earlier attempts.

Every output file is first written as `<dir>/.partial-<name>`; only when the whole conversion
has succeeded are the temporaries fsynced and renamed to their final names, and manifest.json is
written (same way) last, with "complete": true; before the renames a manifest with "complete":
false lists the files about to get their final names. A directory without a complete
manifest.json is therefore never a finished output, and what an interrupted run leaves behind
is `.partial-*` files or files that manifest lists, which the next run removes first
(out_dir.py).
"""

from __future__ import annotations

import os
from pathlib import Path

TEMP_PREFIX = ".partial-"
MANIFEST_NAME = "manifest.json"


def temp_name(final: Path) -> Path:
    return final.with_name(TEMP_PREFIX + final.name)


def final_name(temp: Path) -> Path:
    if not temp.name.startswith(TEMP_PREFIX):
        raise ValueError(f"{temp} is not a temporary output name")
    return temp.with_name(temp.name[len(TEMP_PREFIX) :])


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY
    if path.is_dir():
        flags |= getattr(os, "O_DIRECTORY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temps: list[Path]) -> list[Path]:
    """fsync each temporary, rename it to its final name, fsync the directories; returns finals."""
    finals = []
    for temp in temps:
        _fsync_path(temp)
        final = final_name(temp)
        os.replace(temp, final)
        finals.append(final)
    for directory in sorted({f.parent for f in finals}):
        _fsync_path(directory)
    return finals


def write_text_atomic(final: Path, text: str) -> None:
    temp = temp_name(final)
    temp.write_text(text, encoding="utf-8")
    publish([temp])


def find_temporaries(out: Path) -> list[Path]:
    """`.partial-*` entries in OUT and in its immediate sub-directories."""
    found = list(out.glob(TEMP_PREFIX + "*"))
    for sub in out.iterdir():
        if sub.is_dir() and not sub.name.startswith(TEMP_PREFIX):
            found.extend(sub.glob(TEMP_PREFIX + "*"))
    return sorted(found)
