"""Write one split as webdataset tar shards with DALI index files.

Layout: <dir>/shard-000000.tar, shard-000001.tar, ... each holding `shard_size` samples (the last
one fewer); sample with global index g (0-based among the images kept, in sample order) is the
pair of members `<g:09d>.jpg` (JPEG bytes) and `<g:09d>.cls` (label as ASCII decimal). Tars are
plain POSIX ustar, members with mode 0644, uid/gid 0 and mtime 0 so reruns give identical bytes.

Index file <dir>/shard-000000.idx, the format `nvidia.dali.fn.readers.webdataset(index_paths=)`
reads (version "v1.2", as written by DALI's wds2idx tool):
    line 1:          "v1.2 <number of samples>"
    one line each:   "<ext> <data offset> <size> <member name>" per member of the sample,
                     joined by spaces, e.g. "cls 512 1 000000000.cls jpg 1536 812 000000000.jpg"
where the data offset is the byte position of the member's data (after its 512-byte header).

Decoding runs in a multiprocessing pool when workers > 1 (`imap` keeps sample order), so the
bytes written do not depend on the number of workers; the pool's processes die with the
converter (`processes.die_with_parent`).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .ffcv_writer import sample_rgb
from .images import encode_jpeg
from .processes import die_with_parent
from .sources import Sample

INDEX_VERSION = "v1.2"
_TAR_BLOCK = 512


@dataclass
class Encoded:
    jpeg: bytes | None  # None when the file could not be decoded
    width: int = 0
    height: int = 0
    error: str = ""


@dataclass
class SplitResult:
    """What was written for one split: shard stems, labels and sizes in key order, bad files."""

    shards: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)


def shard_name(i: int) -> str:
    return f"shard-{i:06d}"


def sample_key(g: int) -> str:
    return f"{g:09d}"


def encode_sample(job: tuple[Sample, int, int]) -> Encoded:
    """Decode, cap and JPEG-encode one sample; never raises (pool-safe)."""
    sample, max_resolution, quality = job
    try:
        rgb = sample_rgb(sample, max_resolution)  # [H, W, 3] uint8
    except Exception as exc:  # noqa: BLE001 - any decode failure marks the file bad
        return Encoded(jpeg=None, error=f"{type(exc).__name__}: {exc}".replace("\n", " "))
    return Encoded(jpeg=encode_jpeg(rgb, quality), width=rgb.shape[1], height=rgb.shape[0])


def _encoded_stream(
    samples: list[Sample], max_resolution: int, quality: int, workers: int
) -> Iterator[Encoded]:
    jobs = ((s, max_resolution, quality) for s in samples)
    if workers <= 1:
        yield from map(encode_sample, jobs)
        return
    with multiprocessing.Pool(workers, die_with_parent, (os.getpid(),)) as pool:
        yield from pool.imap(encode_sample, jobs, chunksize=16)


class ShardWriter:
    """Appends samples to tar shards under temporary names and keeps each shard's index."""

    def __init__(self, directory: Path, shard_size: int, temp_name: Callable[[Path], Path]):
        self.directory = directory
        self.shard_size = shard_size
        self.temp_name = temp_name
        self.count = 0
        self.shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._index: list[str] = []

    def add(self, jpeg: bytes, label: int) -> None:
        if self.count % self.shard_size == 0:
            self._close_shard()
            self._open_shard(shard_name(len(self.shards)))
        key = sample_key(self.count)
        entries = [_add_member(self._tar, f"{key}.cls", str(label).encode("ascii"))]
        entries.append(_add_member(self._tar, f"{key}.jpg", jpeg))
        self._index.append(" ".join(entries))
        self.count += 1

    def close(self) -> None:
        self._close_shard()

    def _open_shard(self, stem: str) -> None:
        self.shards.append(stem)
        path = self.temp_name(self.directory / f"{stem}.tar")
        # Stays open across add() calls; _close_shard closes it.
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._index = []

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        stem = self.shards[-1]
        lines = [f"{INDEX_VERSION} {len(self._index)}", *self._index]
        idx = self.temp_name(self.directory / f"{stem}.idx")
        idx.write_text("\n".join(lines) + "\n", encoding="ascii")


def _add_member(tar: tarfile.TarFile | None, name: str, data: bytes) -> str:
    """Append one regular file; returns its index entry "<ext> <offset> <size> <name>"."""
    assert tar is not None  # ShardWriter opens a shard before adding
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = len(data), 0o644, 0, 0, 0
    tar.addfile(info, io.BytesIO(data))
    # After addfile, tar.offset is the end of the data rounded up to a whole block.
    padded = -(-len(data) // _TAR_BLOCK) * _TAR_BLOCK
    offset = tar.offset - padded
    ext = name.split(".", 1)[1]
    return f"{ext} {offset} {len(data)} {name}"


def write_shards(
    directory: Path,
    samples: list[Sample],
    options: tuple[int, int, int, int],
    temp_name: Callable[[Path], Path],
    desc: str,
) -> SplitResult:
    """Write a split's shards (temporary names); options = (max_res, quality, shard_size, workers).

    Bad files are skipped here and listed in the result; the caller decides whether that aborts.
    """
    max_resolution, quality, shard_size, workers = options
    directory.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(directory, shard_size, temp_name)
    result = SplitResult()
    stream = _encoded_stream(samples, max_resolution, quality, workers)
    for sample, enc in tqdm(
        zip(samples, stream, strict=True), total=len(samples), desc=desc, unit="img"
    ):
        if enc.jpeg is None:
            result.bad[sample.name] = enc.error
            continue
        writer.add(enc.jpeg, sample.label)
        result.labels.append(sample.label)
        result.widths.append(enc.width)
        result.heights.append(enc.height)
    writer.close()
    result.shards = writer.shards
    return result
