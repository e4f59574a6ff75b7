"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (gzipped IDX files).

Files: {train,t10k}-images-idx3-ubyte.gz ([N, 28, 28] uint8) and
{train,t10k}-labels-idx1-ubyte.gz ([N] uint8), N = 60000 (train) and 10000 (t10k -> split
"val"). IDX layout: two zero bytes, a type byte (0x08 = uint8), the number of dimensions d, then
d big-endian uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from .sources import DataPrepError, Dataset, Sample

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_SPLIT_FILES = {"train": "train", "val": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """Decode one gzipped IDX file of uint8 data into an array of its declared shape."""
    raw = gzip.decompress(path.read_bytes())
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataPrepError(f"{path} is not a uint8 IDX file; reinstall dataset-fashion-mnist.")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataPrepError(f"{path} is truncated; reinstall dataset-fashion-mnist.")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _split_files(source: Path, prefix: str) -> tuple[Path, Path]:
    images = source / f"{prefix}-images-idx3-ubyte.gz"
    labels = source / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (images, labels) if not p.is_file()]
    if missing:
        raise DataPrepError(
            f"Fashion-MNIST file(s) not found: {', '.join(missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist`, or pass --source DIR holding "
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz."
        )
    return images, labels


def load_fashion_mnist(source: Path = DEFAULT_SOURCE, limit: int | None = None) -> Dataset:
    """Both splits as in-memory samples; `limit` keeps the first N of each split."""
    if limit is not None and limit < 1:
        raise DataPrepError(f"--limit must be a positive number of images per split, got {limit}.")
    splits: dict[str, list[Sample]] = {}
    for split, prefix in _SPLIT_FILES.items():
        images_path, labels_path = _split_files(source, prefix)
        images = read_idx(images_path)  # [N, 28, 28]
        labels = read_idx(labels_path)  # [N]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataPrepError(
                f"{images_path} and {labels_path} do not match ({images.shape} vs "
                f"{labels.shape}); reinstall dataset-fashion-mnist."
            )
        if labels.size and int(labels.max()) >= len(CLASSES):
            raise DataPrepError(f"{labels_path} has labels outside 0..9.")
        n = len(images) if limit is None else min(limit, len(images))
        splits[split] = [Sample(label=int(labels[i]), pixels=images[i]) for i in range(n)]
    return Dataset(source=str(source.resolve()), classes=list(CLASSES), splits=splits)
