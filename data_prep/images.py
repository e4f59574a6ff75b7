"""Decode any supported image file to upright 8-bit RGB, cap its short side, encode JPEG.

Mode rules (every output is [H, W, 3] uint8):
  - EXIF orientation is applied first (PIL.ImageOps.exif_transpose), so a picture stored
    sideways comes out with its displayed width and height;
  - 16/32-bit grey ("I;16", "I;16B", "I"): v -> v >> 8 for 16-bit data (32-bit "I" is clipped
    to [0, 65535] first), then grey -> (g, g, g); PIL's own convert would saturate at 255;
  - anything with alpha (RGBA, LA, PA, P or L with a transparency entry): composited on white,
    out = c * a / 255 + 255 * (1 - a / 255);
  - L, P, CMYK, YCbCr, 1, F ...: PIL's convert("RGB").
Short-side cap: when min(w, h) > max_resolution the image is resized (Lanczos) so that the short
side is exactly max_resolution and the long side is round(long * max_resolution / short).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_HIGH_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB version of an opened PIL image (see the module docstring for the rules)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_GREY:
        values = np.asarray(image).astype(np.int64)  # [H, W]
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def cap_short_side(image: Image.Image, max_resolution: int) -> Image.Image:
    """Resize so that min(w, h) <= max_resolution, keeping the aspect ratio."""
    w, h = image.size
    short = min(w, h)
    if short <= max_resolution:
        return image
    scale = max_resolution / short
    size = (
        max_resolution if w == short else max(1, round(w * scale)),
        max_resolution if h == short else max(1, round(h * scale)),
    )
    return image.resize(size, Image.Resampling.LANCZOS)


def load_rgb(path: Path, max_resolution: int) -> np.ndarray:
    """Decode a file fully and return the capped, upright RGB pixels [H, W, 3] uint8.

    Raises OSError (or PIL's UnidentifiedImageError, a subclass) for unreadable or truncated
    files: `load()` forces the whole decode so truncation is caught here, not later.
    """
    with Image.open(path) as image:
        image.load()
        rgb = to_rgb(image)
    return np.asarray(cap_short_side(rgb, max_resolution))


def grey_to_rgb(grey: np.ndarray, max_resolution: int) -> np.ndarray:
    """[H, W] uint8 grey pixels -> capped [H, W, 3] uint8 RGB (used for IDX datasets)."""
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8)).convert("RGB")
    return np.asarray(cap_short_side(image, max_resolution))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of [H, W, 3] uint8 pixels at the given quality (4:2:0, baseline)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()
