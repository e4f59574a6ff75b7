"""Random access to webdataset shards: `<split>/shard-NNNNNN.tar` with `<key>.jpg` + `<key>.cls`.

The tar headers are scanned once (Python's tarfile records each member's data offset), the
`.cls` labels are read then, and JPEG bytes are later read straight from the tar by offset.
Split index i is the i-th key in sorted order (keys are zero-padded global indices, so
this is the order data_prep wrote). Image sizes come from the JPEG header alone
(PIL opens lazily), which is what the crop sampler needs before decoding.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ShardIndex:
    """Where each image of a split lives: file id, byte offset, byte size, label."""

    files: list[Path]
    file_id: np.ndarray  # int64 [N]
    offset: np.ndarray  # int64 [N]
    size: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


def index_shards(folder: Path) -> ShardIndex:
    """Scan every `shard-*.tar` under `folder` (see the module docstring)."""
    files = sorted(folder.glob("shard-*.tar"))
    if not files:
        raise ValueError(f"no shard-*.tar in {folder}; convert the split with `data_prep` (dali)")
    rows: dict[str, list[int]] = {}  # key -> [file id, offset, size, label]
    for fid, path in enumerate(files):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                row = rows.setdefault(key, [fid, -1, -1, -1])
                if ext == "jpg":
                    row[0], row[1], row[2] = fid, member.offset_data, member.size
                elif ext == "cls":
                    handle = tar.extractfile(member)
                    row[3] = int(handle.read().decode("ascii").strip()) if handle else -1
    keys = sorted(rows)
    table = np.array([rows[k] for k in keys], dtype=np.int64).reshape(-1, 4)
    missing = [k for k, r in zip(keys, table, strict=True) if r[1] < 0 or r[3] < 0]
    if missing:
        raise ValueError(f"{len(missing)} samples lack a .jpg or .cls member, e.g. {missing[0]}")
    return ShardIndex(files, table[:, 0], table[:, 1], table[:, 2], table[:, 3])


class ShardReader:
    """Reads the JPEG bytes and header size of split images by index."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        self.maps = [np.memmap(path, dtype=np.uint8, mode="r") for path in index.files]

    def jpeg(self, i: int) -> np.ndarray:
        """uint8 [bytes] of image i (a view into the memory-mapped shard)."""
        start = int(self.index.offset[i])
        return self.maps[int(self.index.file_id[i])][start : start + int(self.index.size[i])]

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) of image i from its JPEG header."""
        with Image.open(io.BytesIO(self.jpeg(i).tobytes())) as image:
            return image.height, image.width
