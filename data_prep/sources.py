"""What to convert: a class list and, per split, an ordered list of samples.

A `Sample` is either a file path or an in-memory [H, W] uint8 grey picture (IDX datasets), with
its class index. Class index = position of the class name in `Dataset.classes`; for folder
trees that is the sorted union of class-folder names over all splits, so both splits and both
output formats agree. Within a split, samples are ordered by (class index, file name): output
order never depends on the file system or on the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS, has_image_extension


class DataPrepError(ValueError):
    """A problem with the user's input or output location; the message says what to do."""


@dataclass(frozen=True)
class Sample:
    label: int
    path: Path | None = None  # an image file, or
    pixels: np.ndarray | None = field(default=None, compare=False)  # [H, W] uint8 grey

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<in-memory>"


@dataclass
class Dataset:
    source: str  # where it came from, recorded in the manifest
    classes: list[str]
    splits: dict[str, list[Sample]]  # split name -> ordered samples


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataPrepError(f"{what} {path} does not exist: pass an existing directory.")
    if not path.is_dir():
        raise DataPrepError(f"{what} {path} is not a directory: pass the dataset's root folder.")


def _class_dirs(split_root: Path) -> list[Path]:
    dirs = sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataPrepError(
            f"{split_root} has no class folders: expected {split_root}/<class>/<image files>."
        )
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    """Sorted image files of one class folder; errors on sub-folders, unknown extensions or no
    images. Images are read only directly inside a class folder: a nested folder is refused
    rather than read (its images would otherwise be left out without a word)."""
    entries = [p for p in class_dir.iterdir() if not p.name.startswith(".")]
    nested = sorted(p for p in entries if p.is_dir())
    if nested:
        raise DataPrepError(
            f"class folder {class_dir} holds the folder {nested[0]}"
            f"{f' (and {len(nested) - 1} more)' if len(nested) > 1 else ''}: images are read "
            "only directly inside each class folder (<class>/<image>); move them up into "
            f"{class_dir}, or make the sub-folder a class folder of its own."
        )
    files = sorted(p for p in entries if p.is_file())
    unknown = [p for p in files if not has_image_extension(p)]
    if unknown:
        shown = ", ".join(str(p) for p in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise DataPrepError(
            f"{len(unknown)} file(s) with an unknown extension: {shown}{more}. Accepted "
            f"(any case): {' '.join(IMAGE_EXTENSIONS)}; move or convert the other files."
        )
    if not files:
        raise DataPrepError(
            f"class folder {class_dir} is empty: add images or remove the folder "
            "(every class needs at least one image)."
        )
    return files


def scan_class_trees(split_roots: dict[str, Path], source: Path) -> Dataset:
    """Build a Dataset from {split: folder holding <class>/<images>}."""
    per_split = {split: _class_dirs(root) for split, root in split_roots.items()}
    classes = sorted({d.name for dirs in per_split.values() for d in dirs})
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, dirs in per_split.items():
        splits[split] = [Sample(label=index[d.name], path=f) for d in dirs for f in _image_files(d)]
    return Dataset(source=str(source.resolve()), classes=classes, splits=splits)


def scan_imagenet(src: Path) -> Dataset:
    """SRC/train/<class>/* and/or SRC/val/<class>/* (either split alone is fine)."""
    _require_dir(src, "SRC")
    roots = {s: src / s for s in ("train", "val") if (src / s).is_dir()}
    if not roots:
        raise DataPrepError(
            f"{src} has neither a train/ nor a val/ folder: an ImageNet-style tree is "
            "SRC/train/<class>/* and SRC/val/<class>/*; for a plain SRC/<class>/* tree use "
            "`data_prep folder`."
        )
    return scan_class_trees(roots, src)


def scan_folder(src: Path) -> Dataset:
    """A single class-folder tree SRC/<class>/*, written as the split "train"."""
    _require_dir(src, "SRC")
    return scan_class_trees({"train": src}, src)
