"""Write one split as an FFCV .beton: fields `image` (RGBImageField, jpg) then `label` (IntField).

Images are decoded, made upright RGB and short-side capped by `images.load_rgb` before FFCV
sees them; the field itself gets max_resolution=None because FFCV's own cap is on the *long*
side and would shrink non-square images a second time (the DALI shards would then disagree).
FFCV stores only the JPEG bytes, width and height per image, so the cap is not recorded in the
file; it is in manifest.json.

FFCV's writer runs `workers` processes that call `dataset[i]` and place the result at row i, so
the row order is fixed by the sample list, not by the number of workers. A worker that raises
would leave FFCV's main loop waiting forever, so `_SplitImages.__getitem__` never raises: an
unreadable file becomes a 1x1 placeholder and its row index is appended to a log file (one line
`<index>\t<reason>` per bad file, O_APPEND so processes do not interleave). The index, not the
file name, identifies the sample: a name may hold tabs, newlines or bytes that are not UTF-8,
and would not survive the log unchanged. When the log is not empty after the pass, the caller
either aborts or writes the split again without those samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .images import grey_to_rgb, load_rgb
from .sources import DataPrepError, Sample

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)
_CHUNK = 64  # samples per FFCV work item: small enough to balance, large enough to amortise


def sample_rgb(sample: Sample, max_resolution: int) -> np.ndarray:
    """Capped upright RGB [H, W, 3] uint8 of a sample (file or in-memory grey)."""
    if sample.pixels is not None:
        return grey_to_rgb(sample.pixels, max_resolution)
    assert sample.path is not None  # Sample invariant: one of path/pixels is set
    return load_rgb(sample.path, max_resolution)


class _SplitImages:
    """Indexable (image [H, W, 3] uint8, label int) view of a split for FFCV's writer."""

    def __init__(self, samples: list[Sample], max_resolution: int, bad_log: Path) -> None:
        self.samples = samples
        self.max_resolution = max_resolution
        self.bad_log = bad_log

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        sample = self.samples[i]
        try:
            return sample_rgb(sample, self.max_resolution), sample.label
        except Exception as exc:  # noqa: BLE001 - any decode failure marks the file bad
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, no tabs
            line = f"{i}\t{reason}\n"
            fd = os.open(self.bad_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
            return _PLACEHOLDER, sample.label


def write_beton(
    path: Path,
    samples: list[Sample],
    max_resolution: int,
    jpeg_quality: int,
    workers: int,
    bad_log: Path,
) -> None:
    """Write `samples` to `path` (a temporary name; the caller publishes it).

    Raises DataPrepError when a writer process fails or the disk is full; `path` is then
    removed, so a failed run does not keep the space it had filled.
    """
    from fastproto.data.ffcv_threads import import_ffcv

    import_ffcv()
    from ffcv.fields import IntField, RGBImageField

    from .ffcv_process import WatchedWriter, is_disk_full

    fields = {
        "image": RGBImageField(write_mode="jpg", max_resolution=None, jpeg_quality=jpeg_quality),
        "label": IntField(),
    }
    writer = WatchedWriter(str(path), fields, num_workers=workers)
    try:
        writer.from_indexed_dataset(
            _SplitImages(samples, max_resolution, bad_log), chunksize=_CHUNK
        )
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DataPrepError(
                f"no space left on the device while writing {path} ({exc}); the partial file "
                "was removed: free some space or choose an OUT on another disk, then rerun."
            ) from exc
        raise


def read_bad_log(bad_log: Path) -> dict[int, str]:
    """{sample index: reason} from a log written by `_SplitImages`."""
    if not bad_log.exists():
        return {}
    rows = (line.split("\t", 1) for line in bad_log.read_text("utf-8").splitlines() if line)
    return {int(row[0]): (row[1] if len(row) > 1 else "") for row in rows}


def beton_summary(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels [N], widths [N], heights [N]) read back from a written .beton."""
    from fastproto.data.ffcv_threads import import_ffcv

    import_ffcv()
    from ffcv.reader import Reader

    reader = Reader(str(path))
    meta = reader.metadata  # structured [N]: f0 = image (mode, width, height, data_ptr), f1 = label
    return (
        np.asarray(meta["f1"], dtype=np.int64),
        np.asarray(meta["f0"]["width"], dtype=np.int64),
        np.asarray(meta["f0"]["height"], dtype=np.int64),
    )
