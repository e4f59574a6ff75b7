"""Image fixtures for the data_prep and loader tests: small ImageNet-style trees on disk.

`write_imagenet_tree(root)` writes `root/<split>/<class>/<file>` images built from Fashion-MNIST
pictures (the real ones from Debian's `dataset-fashion-mnist` when installed, otherwise
synthetic 28x28 shapes of the same kind), upscaled to mixed sizes, tinted, and saved in the modes
and formats a converter must handle: RGB/L/CMYK JPEG, L/RGBA/LA/P/I;16 PNG, a palette PNG with
per-entry transparency (tRNS), BMP, TIFF, lossless WebP, GIF, an upper-case `.JPEG` extension,
and a non-square JPEG whose EXIF orientation says "rotate 90 degrees clockwise".

Every `FixtureImage` carries `expected`, the [H, W, 3] uint8 picture a correct converter must
produce before any resize, derived from the pixels the fixture started from rather than from
any converter code:
  - L and I;16 grey g -> (g, g, g); I;16 values v in [0, 65535] map to v >> 8;
  - RGBA / LA / P with tRNS, alpha a: out = round(c * a / 255 + 255 * (1 - a / 255)) (white matte);
  - P: the palette colours; CMYK: PIL's CMYK -> RGB of the stored ink values;
  - EXIF orientation 6: the upright picture (taller than wide), not the stored one.
`lossless` says whether the file on disk stores `expected` exactly (PNG, BMP, TIFF, WebP, GIF).

Sample order contract of the converters: class index = position of the class name in the sorted
union of class folders over splits; within a split, samples are ordered by (class index, file
name). `FixtureTree.ordered(split)` lists a split's images in that order.

`write_bad_files(dir)` adds a truncated JPEG and a text file named `.png`;
`write_fashion_mnist_idx(dir, ...)` writes gzipped IDX files laid out like Debian's package.
"""

from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# (mode, file suffix) cycled over the images of a tree; see the module docstring.
_VARIANTS: tuple[tuple[str, str], ...] = (
    ("RGB", ".jpg"),
    ("L", ".png"),
    ("RGBA", ".png"),
    ("P", ".png"),
    ("CMYK", ".jpg"),
    ("I;16", ".png"),
    ("LA", ".png"),
    ("RGB-exif6", ".JPEG"),
    ("RGB", ".bmp"),
    ("P-trns", ".png"),
    ("RGB", ".tiff"),
    ("L", ".jpeg"),
    ("RGB", ".webp"),
    ("P", ".gif"),
)
# (width, height) cycled independently of the variants so that modes meet several shapes.
_SIZES: tuple[tuple[int, int], ...] = ((28, 28), (40, 32), (36, 52), (64, 48), (45, 30))
_LOSSY_SUFFIXES = {".jpg", ".jpeg"}


@dataclass(frozen=True)
class FixtureImage:
    path: Path
    split: str
    class_name: str
    expected: np.ndarray  # [H, W, 3] uint8, upright, alpha composited on white
    lossless: bool
    mode: str  # the PIL mode stored on disk ("RGB-exif6" for the rotated JPEG)


@dataclass
class FixtureTree:
    root: Path
    classes: list[str]  # sorted: class index = position
    images: list[FixtureImage]

    def ordered(self, split: str) -> list[FixtureImage]:
        """Images of one split in the converters' sample order (class index, file name)."""
        rows = [im for im in self.images if im.split == split]
        return sorted(rows, key=lambda im: (self.classes.index(im.class_name), im.path.name))

    def label(self, image: FixtureImage) -> int:
        return self.classes.index(image.class_name)


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (big-endian header: magic, dims) as a uint8 array."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n grey 28x28 product pictures [n, 28, 28] uint8 and labels [n] int64.

    Real Fashion-MNIST test images when Debian's package is installed, otherwise smooth
    synthetic blobs on a black background (same value range and layout).
    """
    images_gz = DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    labels_gz = DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"
    if images_gz.is_file() and labels_gz.is_file():
        images = read_idx_gz(images_gz)[:n].copy()
        labels = read_idx_gz(labels_gz)[:n].astype(np.int64)
        if len(images) == n:
            return images, labels
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(10, 18, size=2)
        sy, sx = rng.uniform(4, 9, size=2)
        blob = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
        out[i] = np.clip(blob * rng.uniform(160, 255), 0, 255).astype(np.uint8)
    return out, rng.integers(0, 10, size=n).astype(np.int64)


def _colour_picture(grey: np.ndarray, size: tuple[int, int], index: int) -> np.ndarray:
    """Upscale a 28x28 grey picture to (w, h) and tint it; returns [h, w, 3] uint8."""
    up = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR), np.float64)
    tint = np.array([1.0, 0.55 + 0.1 * (index % 4), 0.35 + 0.15 * (index % 3)])
    # A faint background ramp keeps every channel away from pure black.
    ramp = np.linspace(20, 60, size[0])[None, :, None]
    return np.clip(up[..., None] * tint + ramp, 0, 255).astype(np.uint8)


def _alpha(h: int, w: int) -> np.ndarray:
    """[h, w] uint8 alpha ramp from transparent (left) to opaque (right)."""
    return np.repeat(np.linspace(0, 255, w).round().astype(np.uint8)[None, :], h, axis=0)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.round(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _grey3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


def _make_variant(rgb: np.ndarray, mode: str) -> tuple[Image.Image, np.ndarray, dict]:
    """Image to save, expected upright RGB [H, W, 3], and extra save() arguments."""
    h, w = rgb.shape[:2]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "RGB":
        return Image.fromarray(rgb), rgb, {}
    if mode == "L":
        return Image.fromarray(grey), _grey3(grey), {}
    if mode == "RGBA":
        alpha = _alpha(h, w)
        im = Image.fromarray(np.dstack([rgb, alpha]))
        return im, _on_white(rgb, alpha), {}
    if mode == "LA":
        alpha = _alpha(h, w)
        return Image.fromarray(np.dstack([grey, alpha])), _on_white(_grey3(grey), alpha), {}
    if mode in ("P", "P-trns"):
        pal = Image.fromarray(rgb).quantize(colors=32)
        palette = np.asarray(pal.getpalette()[: 3 * 32], np.uint8).reshape(32, 3)
        index = np.asarray(pal)  # [H, W] palette indices
        if mode == "P":
            return pal, palette[index], {}
        # PNG tRNS chunk: one alpha per palette entry, so transparency follows the colour.
        entry_alpha = np.linspace(0, 255, 32).round().astype(np.uint8)
        expected = _on_white(palette[index], entry_alpha[index])
        return pal, expected, {"transparency": entry_alpha.tobytes()}
    if mode == "CMYK":
        cmyk = Image.fromarray(rgb).convert("CMYK")
        return cmyk, np.asarray(cmyk.convert("RGB")), {}
    if mode == "I;16":
        v16 = grey.astype(np.uint16) * 257 + np.uint16(100)  # exercises the low byte too
        v16 = np.minimum(v16, 65535).astype(np.uint16)
        im = Image.frombytes("I;16", (w, h), v16.astype("<u2").tobytes())
        return im, _grey3((v16 >> 8).astype(np.uint8)), {}
    if mode == "RGB-exif6":
        # Stored sideways; orientation 6 tells viewers to turn it 90 degrees clockwise.
        upright = rgb if h > w else np.ascontiguousarray(np.transpose(rgb, (1, 0, 2)))
        stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        return stored, upright, {"exif": exif.tobytes()}
    raise ValueError(f"unknown fixture mode {mode!r}")


def _save(im: Image.Image, path: Path, extra: dict) -> None:
    suffix = path.suffix.lower()
    if suffix in _LOSSY_SUFFIXES:
        im.save(path, format="JPEG", quality=95, subsampling=0, **extra)
    elif suffix == ".webp":
        im.save(path, format="WEBP", lossless=True)
    elif suffix in (".tif", ".tiff"):
        im.save(path, format="TIFF")
    else:
        im.save(path, **extra)


def write_imagenet_tree(
    root: Path,
    classes: Sequence[str] = ("Bag", "Coat", "Trouser"),
    per_class: dict[str, int] | None = None,
    seed: int = 0,
) -> FixtureTree:
    """Write root/<split>/<class>/img_<i>.<ext> and return what a converter must produce.

    per_class maps split -> images per class (default {"train": 5, "val": 2}); modes, formats
    and sizes cycle so that a tree of 3 classes x 5 covers every variant at least once.
    """
    per_class = {"train": 5, "val": 2} if per_class is None else per_class
    total = sum(per_class.values()) * len(classes)
    greys, _ = fashion_mnist_like(total, seed=seed)
    images: list[FixtureImage] = []
    i = 0
    for split, count in per_class.items():
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                mode, suffix = _VARIANTS[i % len(_VARIANTS)]
                rgb = _colour_picture(greys[i], _SIZES[i % len(_SIZES)], i)
                im, expected, extra = _make_variant(rgb, mode)
                path = folder / f"img_{j:03d}{suffix}"
                _save(im, path, extra)
                lossless = suffix.lower() not in _LOSSY_SUFFIXES
                images.append(FixtureImage(path, split, class_name, expected, lossless, mode))
                i += 1
    return FixtureTree(root=root, classes=sorted(set(classes)), images=images)


def write_bad_files(folder: Path) -> tuple[Path, Path]:
    """A JPEG cut off mid-scan and a text file with a .png name; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    truncated = folder / "zz_truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    not_image = folder / "zz_not_an_image.png"
    not_image.write_text("this is not a PNG\n")
    return truncated, not_image


def write_fashion_mnist_idx(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray
) -> None:
    """Write <split>-images-idx3-ubyte.gz and <split>-labels-idx1-ubyte.gz (split: train/t10k)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    img_header = struct.pack(">4B3I", 0, 0, 8, 3, n, h, w)
    lab_header = struct.pack(">4BI", 0, 0, 8, 1, n)
    (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(img_header + images.astype(np.uint8).tobytes())
    )
    (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(lab_header + labels.astype(np.uint8).tobytes())
    )
