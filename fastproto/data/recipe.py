"""The multi-crop recipe: how many crops of which size, and the RandomResizedCrop ranges.

DINO's recipe cuts G global crops (area fraction s ~ U(global_scale), side `global_size`) and
L local crops (s ~ U(local_scale), side `local_size`) from every image; the aspect ratio r of
every crop has log r ~ U(log ratio[0], log ratio[1]). Crop c of an image is global for
c < G and local for G <= c < G + L; every backend uses that numbering.

`resize` picks the filter that scales a crop window to its output side S:
  "antialias"  every backend's antialiasing filter for every crop (FFCV and OpenCV: area;
               folder: PIL bilinear; DALI: linear with antialias), the usual recipe.
  "fast"       plain bilinear (no antialiasing) for windows shrunk by less than 2x on both
               axes, where every source pixel still contributes to the output; the
               antialiasing filter for windows shrunk by 2x or more. About 3x cheaper on the
               CPU for 2 x 224 + 10 x 96 crops of 256-500 px images; see
               bench/results/loader_throughput_cpu.md for its cost and its difference in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RESIZE_MODES = ("antialias", "fast")


def _check_range(name: str, lo: float, hi: float, upper: float | None) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
        raise ValueError(
            f"{name}={(lo, hi)} must be a range 0 < low <= high; pass e.g. (0.25, 1.0)"
        )
    if upper is not None and hi > upper:
        raise ValueError(f"{name}={(lo, hi)} must not exceed {upper}; lower its upper end")


@dataclass(frozen=True)
class MultiCropRecipe:
    """Crop counts, output sizes and RandomResizedCrop ranges shared by every loader backend."""

    num_global: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.25, 1.0)
    num_local: int = 10
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.25)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    resize: str = "antialias"

    def __post_init__(self) -> None:
        if self.num_global < 1:
            raise ValueError(f"num_global={self.num_global} must be >= 1 (DINO uses 2)")
        if self.num_local < 0:
            raise ValueError(f"num_local={self.num_local} must be >= 0 (0 turns local crops off)")
        for name, size in (("global_size", self.global_size), ("local_size", self.local_size)):
            if size < 1:
                raise ValueError(f"{name}={size} must be a positive number of pixels")
        _check_range("global_scale", *self.global_scale, upper=1.0)
        _check_range("local_scale", *self.local_scale, upper=1.0)
        _check_range("ratio", *self.ratio, upper=None)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize={self.resize!r} is unknown; choose one of {RESIZE_MODES}")

    @property
    def num_crops(self) -> int:
        """G + L, the number of crops cut from each image."""
        return self.num_global + self.num_local

    def crop_size(self, crop: int) -> int:
        """Output side length of crop number `crop` (globals first)."""
        return self.global_size if crop < self.num_global else self.local_size

    def crop_scale(self, crop: int) -> tuple[float, float]:
        """Area-fraction range of crop number `crop` (globals first)."""
        return self.global_scale if crop < self.num_global else self.local_scale
