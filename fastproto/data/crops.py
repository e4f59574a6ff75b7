"""One crop-window sampler for every backend, keyed by (seed, epoch, image index, crop index).

Each crop window follows torchvision's RandomResizedCrop.get_params on an image of H x W:
up to 10 attempts of
    s ~ U(scale),  log r ~ U(log ratio),  w = round(sqrt(s H W r)),  h = round(sqrt(s H W / r)),
accepted when 0 < w <= W and 0 < h <= H, with top ~ U{0..H-h} and left ~ U{0..W-w};
otherwise the fallback: the whole image, narrowed to the nearest allowed ratio, centred.
(round() here is floor(x + 0.5); torchvision rounds halves to even, which differs only on
exact halves.)

The uniforms do not come from a stateful generator: draw d of crop c of image i in epoch e
is a 32-bit integer hash of (seed, e, i, c, d), so any backend, worker or thread that
knows the key cuts the same window, in any order, and a resumed run skips images without
drawing for them. The functions are plain integer/float code that numba compiles (FFCV's
decode operation calls them inside its compiled loop); without numba they run as Python.

Window layout everywhere: int32 [..., 4] = (top, left, height, width) in source pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastproto.data.recipe import MultiCropRecipe

try:  # numba ships with ffcv; the folder backend also works without it.
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing

    def njit(*args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]
        return args[0] if args and callable(args[0]) else (lambda f: f)


_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_ATTEMPTS = 10
_DRAWS_PER_ATTEMPT = 2  # area fraction, log aspect ratio


@njit(cache=True)
def _mix32(x: int) -> int:
    # A 32-bit integer finaliser; constants < 2**27 keep every product inside int64.
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


@njit(cache=True)
def _fold(h: int, v: int) -> int:
    return _mix32(((h ^ (v & _MASK32)) + _GOLDEN) & _MASK32)


@njit(cache=True)
def crop_uniform(seed: int, epoch: int, index: int, crop: int, draw: int) -> float:
    """Uniform in [0, 1) for draw `draw` of crop `crop` of image `index` in `epoch`."""
    h = _fold(_fold(0, seed), seed >> 32)
    h = _fold(_fold(h, epoch), index)
    h = _fold(_fold(h, index >> 32), crop)
    return _fold(h, draw) / 4294967296.0


@njit(cache=True)
def sample_window(
    seed: int,
    epoch: int,
    index: int,
    crop: int,
    height: int,
    width: int,
    scale_lo: float,
    scale_hi: float,
    ratio_lo: float,
    ratio_hi: float,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of crop `crop` of image `index` (H x W) in `epoch`; see module doc."""
    area = height * width
    log_lo = math.log(ratio_lo)
    log_hi = math.log(ratio_hi)
    for attempt in range(_ATTEMPTS):
        d = attempt * _DRAWS_PER_ATTEMPT
        target = area * (
            scale_lo + (scale_hi - scale_lo) * crop_uniform(seed, epoch, index, crop, d)
        )
        u_ratio = crop_uniform(seed, epoch, index, crop, d + 1)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(math.floor(math.sqrt(target * aspect) + 0.5))
        h = int(math.floor(math.sqrt(target / aspect) + 0.5))
        if 0 < w <= width and 0 < h <= height:
            d_pos = _ATTEMPTS * _DRAWS_PER_ATTEMPT
            top = int(crop_uniform(seed, epoch, index, crop, d_pos) * (height - h + 1))
            left = int(crop_uniform(seed, epoch, index, crop, d_pos + 1) * (width - w + 1))
            return min(top, height - h), min(left, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio_lo:
        w = width
        h = int(math.floor(w / ratio_lo + 0.5))
    elif in_ratio > ratio_hi:
        h = height
        w = int(math.floor(h * ratio_hi + 0.5))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(cache=True)
def fill_windows(
    seed: int,
    epoch: int,
    index: int,
    height: int,
    width: int,
    params: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write the windows of all crops of one image into `out` int32 [C, 4].

    `params` float64 [C, 4] holds per crop (scale_lo, scale_hi, ratio_lo, ratio_hi).
    """
    for c in range(params.shape[0]):
        top, left, h, w = sample_window(
            seed,
            epoch,
            index,
            c,
            height,
            width,
            params[c, 0],
            params[c, 1],
            params[c, 2],
            params[c, 3],
        )
        out[c, 0] = top
        out[c, 1] = left
        out[c, 2] = h
        out[c, 3] = w


@njit(cache=True)
def bilinear_suffices(height: int, width: int, size: int) -> bool:
    """True when an h x w window shrinks to size x size by less than 2x on both axes.

    Then bilinear sampling (2 taps per axis, samples less than 2 source pixels apart) still
    reads every source pixel, so the "fast" resize mode uses it instead of an antialiasing
    filter; upscaled windows are always bilinear.
    """
    return height < 2 * size and width < 2 * size


def crop_params(recipe: MultiCropRecipe) -> np.ndarray:
    """float64 [G + L, 4]: (scale_lo, scale_hi, ratio_lo, ratio_hi) per crop, globals first."""
    rows = [(*recipe.crop_scale(c), *recipe.ratio) for c in range(recipe.num_crops)]
    return np.asarray(rows, dtype=np.float64).reshape(recipe.num_crops, 4)


def sample_windows(
    recipe: MultiCropRecipe,
    seed: int,
    epoch: int,
    indices: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
) -> np.ndarray:
    """int32 [B, G + L, 4] crop windows for images `indices` of sizes `heights` x `widths`."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed={seed} and epoch={epoch} must be >= 0")
    params = crop_params(recipe)
    out = np.empty((len(indices), recipe.num_crops, 4), dtype=np.int32)
    for b in range(len(indices)):
        if heights[b] < 1 or widths[b] < 1:
            raise ValueError(f"image {indices[b]} has size {heights[b]}x{widths[b]}; it is empty")
        fill_windows(seed, epoch, int(indices[b]), int(heights[b]), int(widths[b]), params, out[b])
    return out
