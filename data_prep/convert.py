"""Convert a Dataset into FFCV or DALI output in OUT, crash-safely, then write the manifest.

Order of work (see atomic.py for why): check OUT (out_dir.py: done, refused, or ours to
clean) -> remove what an earlier attempt of ours left -> write every split under temporary
names -> if any file was unreadable, abort (removing the temporaries) unless skip_bad -> a
manifest.json that is not complete, naming the outputs -> rename all temporaries to their
final names -> the complete manifest.json.

    FFCV:  OUT/<split>.beton
    DALI:  OUT/<split>/shard-000000.tar + shard-000000.idx, ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import dali_writer, ffcv_writer
from .atomic import find_temporaries, publish, temp_name
from .manifest import build_manifest, split_entry, write_manifest, write_pending_manifest
from .out_dir import check_collisions, check_out, clean
from .sources import DataPrepError, Dataset, Sample

FORMATS = ("ffcv", "dali")
# Per split, in output order: labels, widths, heights, and the output files (relative to OUT).
_Stats = tuple[list[int], list[int], list[int], list[str]]


class BadFilesError(DataPrepError):
    """Unreadable images were found and skip_bad was not set; nothing final was written."""

    def __init__(self, bad: dict[str, str]) -> None:
        self.bad = bad
        lines = "\n".join(f"  {path}: {why}" for path, why in sorted(bad.items())[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        super().__init__(
            f"{len(bad)} unreadable or truncated image file(s):\n{lines}{more}\n"
            "Fix or remove them, or pass --skip-bad to leave them out (they are then listed "
            "in manifest.json)."
        )


@dataclass(frozen=True)
class ConvertOptions:
    fmt: str
    max_resolution: int = 512
    jpeg_quality: int = 90
    shard_size: int = 10000
    workers: int = 1
    skip_bad: bool = False
    overwrite: bool = False

    def validate(self) -> None:
        if self.fmt not in FORMATS:
            raise DataPrepError(f"format must be one of {FORMATS}, got {self.fmt!r}.")
        if self.max_resolution < 1:
            raise DataPrepError("--max-resolution must be a positive number of pixels.")
        if not 1 <= self.jpeg_quality <= 100:
            raise DataPrepError("--jpeg-quality must be between 1 and 100.")
        if self.shard_size < 1:
            raise DataPrepError("--shard-size must be a positive number of images per shard.")
        if self.workers < 1:
            raise DataPrepError("--workers must be at least 1.")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_ffcv_split(
    out: Path, split: str, samples: list[Sample], options: ConvertOptions
) -> tuple[_Stats, dict[str, str], list[Path]]:
    temp = temp_name(out / f"{split}.beton")
    bad_log = temp_name(out / f"{split}.bad.log")
    args = (options.max_resolution, options.jpeg_quality, options.workers, bad_log)
    ffcv_writer.write_beton(temp, samples, *args)
    bad_rows = ffcv_writer.read_bad_log(bad_log)
    bad = {samples[i].name: why for i, why in sorted(bad_rows.items())}
    if bad and options.skip_bad:
        log(f"{split}: rewriting without {len(bad)} unreadable file(s)")
        kept = [s for i, s in enumerate(samples) if i not in bad_rows]
        bad_log.unlink()
        ffcv_writer.write_beton(temp, kept, *args)
        again = ffcv_writer.read_bad_log(bad_log)
        if again:  # readable in the first pass, not in the second: never keep a placeholder
            names = ", ".join(kept[i].name for i in sorted(again)[:5])
            raise DataPrepError(
                f"{len(again)} file(s) became unreadable during the conversion: {names}. "
                "Make sure the source does not change while data_prep runs, then rerun."
            )
    labels, widths, heights = ffcv_writer.beton_summary(temp)
    stats = (labels.tolist(), widths.tolist(), heights.tolist(), [f"{split}.beton"])
    return stats, bad, [temp]


def _write_dali_split(
    out: Path, split: str, samples: list[Sample], options: ConvertOptions
) -> tuple[_Stats, dict[str, str], list[Path]]:
    opts = (options.max_resolution, options.jpeg_quality, options.shard_size, options.workers)
    result = dali_writer.write_shards(out / split, samples, opts, temp_name, desc=split)
    files = [f"{split}/{stem}{ext}" for stem in result.shards for ext in (".tar", ".idx")]
    temps = [temp_name(out / f) for f in files]
    return (result.labels, result.widths, result.heights, files), result.bad, temps


def _recorded_options(options: ConvertOptions, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The options manifest.json records (and a rerun is compared with)."""
    settings = {k: v for k, v in asdict(options).items() if k not in ("fmt", "overwrite")}
    if options.fmt == "ffcv":
        settings.pop("shard_size")
    return {**settings, **(extra or {})}


def convert(
    load: Callable[[], Dataset],
    out: Path,
    options: ConvertOptions,
    dataset_kind: str,
    source: Path,
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Load the dataset from `source`, write it to OUT in options.fmt, and return OUT."""
    options.validate()
    out = Path(out)
    request: dict[str, Any] = {
        "format": options.fmt,
        "dataset": dataset_kind,
        "source": str(Path(source).resolve()),
        "options": _recorded_options(options, extra_options),
    }
    if check_out(out, request, options.overwrite):
        log(f"{out} already holds this conversion (manifest.json); pass --overwrite to redo it.")
        return out
    dataset = load()  # validates the source before OUT is touched
    out.mkdir(parents=True, exist_ok=True)
    check_collisions(out, options.fmt, list(dataset.splits))
    clean(out)
    write_split = _write_ffcv_split if options.fmt == "ffcv" else _write_dali_split
    try:
        splits: dict[str, dict[str, Any]] = {}
        bad: dict[str, str] = {}
        temps: list[Path] = []
        for split, samples in dataset.splits.items():
            stats, split_bad, split_temps = write_split(out, split, samples, options)
            splits[split] = split_entry(dataset.classes, *stats)
            # What verify checks the output against: kept + skipped = found in the source.
            splits[split] |= {"source_images": len(samples), "skipped": len(split_bad)}
            bad.update(split_bad)
            temps.extend(split_temps)
        if bad and not options.skip_bad:
            raise BadFilesError(bad)
        if any(entry["count"] == 0 for entry in splits.values()):
            raise DataPrepError(
                f"no readable images in a split of {dataset.source}; nothing written."
            )
        write_pending_manifest(out, [f for entry in splits.values() for f in entry["files"]])
        publish(temps)
    except BaseException:
        for path in find_temporaries(out):
            path.unlink(missing_ok=True)
        raise
    for path in find_temporaries(out):  # bad-file logs
        path.unlink(missing_ok=True)
    manifest = build_manifest(
        fmt=options.fmt,
        dataset=dataset_kind,
        source=dataset.source,
        options=request["options"],
        classes=dataset.classes,
        splits=splits,
        bad=bad,
        out=out,
    )
    write_manifest(out, manifest)
    total = sum(s["count"] for s in splits.values())
    log(f"wrote {total} images ({options.fmt}) to {out}; {len(bad)} bad file(s) skipped")
    return out
