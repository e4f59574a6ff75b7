"""One library call per conversion, for the trainer and the `data_prep` command.

    prepare_fashion_mnist(Path("data/fmnist"), "ffcv", limit=1000)
    prepare_imagenet(Path("/data/imagenet"), Path("data/in1k-dali"), "dali", workers=8)
    prepare_folder(Path("photos"), Path("data/photos"), "ffcv", max_resolution=256)

Keyword options (defaults): max_resolution=512 (short-side cap), jpeg_quality=90,
shard_size=10000 (DALI), workers=1, skip_bad=False, overwrite=False. Each returns OUT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .convert import ConvertOptions, convert
from .fashion_mnist import DEFAULT_SOURCE, load_fashion_mnist
from .sources import scan_folder, scan_imagenet


def prepare_imagenet(src: Path, out: Path, fmt: str, **options: Any) -> Path:
    """SRC/train/<class>/* and/or SRC/val/<class>/* -> OUT in fmt ("ffcv" or "dali")."""
    return convert(
        lambda: scan_imagenet(Path(src)),
        Path(out),
        ConvertOptions(fmt, **options),
        "imagenet",
        Path(src),
    )


def prepare_folder(src: Path, out: Path, fmt: str, **options: Any) -> Path:
    """SRC/<class>/* -> OUT in fmt, as the single split "train"."""
    return convert(
        lambda: scan_folder(Path(src)),
        Path(out),
        ConvertOptions(fmt, **options),
        "folder",
        Path(src),
    )


def prepare_fashion_mnist(
    out: Path,
    fmt: str,
    limit: int | None = None,
    source: Path = DEFAULT_SOURCE,
    **options: Any,
) -> Path:
    """Debian's Fashion-MNIST (train 60000, val 10000; `limit` per split) -> OUT in fmt."""
    return convert(
        lambda: load_fashion_mnist(Path(source), limit),
        Path(out),
        ConvertOptions(fmt, **options),
        "fashion-mnist",
        Path(source),
        {"limit": limit},
    )
