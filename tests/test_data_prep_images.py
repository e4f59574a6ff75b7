"""data_prep.images: every fixture mode decodes to the upright RGB the fixture says it holds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastproto.data_prep.images import cap_short_side, encode_jpeg, has_image_extension, load_rgb
from image_fixtures import FixtureTree, write_bad_files, write_imagenet_tree
from PIL import Image


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return write_imagenet_tree(tmp_path_factory.mktemp("images") / "src")


def test_every_mode_decodes_to_expected_rgb(tree: FixtureTree) -> None:
    modes = set()
    for image in tree.images:
        got = load_rgb(image.path, max_resolution=512)
        assert got.dtype == np.uint8 and got.shape == image.expected.shape, image.path
        err = np.abs(got.astype(np.int64) - image.expected.astype(np.int64))
        if image.lossless:
            # Lossless files hold the expected pixels exactly; alpha rounding may differ by 1.
            assert err.max() <= 1, (image.path, image.mode, err.max())
        else:
            assert err.mean() < 3.0, (image.path, image.mode, err.mean())
        modes.add(image.mode)
    assert {"L", "RGB", "RGBA", "LA", "P", "P-trns", "CMYK", "I;16", "RGB-exif6"} <= modes


def test_exif_rotation_gives_the_upright_size(tree: FixtureTree) -> None:
    rotated = [im for im in tree.images if im.mode == "RGB-exif6"]
    assert rotated
    for image in rotated:
        with Image.open(image.path) as raw:
            stored_w, stored_h = raw.size
        assert stored_w > stored_h  # stored sideways
        got = load_rgb(image.path, max_resolution=512)
        assert got.shape[:2] == (stored_w, stored_h)  # [H, W] = stored (W, H)


@pytest.mark.parametrize(
    ("size", "cap", "want"),
    [
        ((100, 40), 20, (50, 20)),
        ((40, 100), 20, (20, 50)),
        ((33, 77), 10, (10, 23)),
        ((30, 30), 30, (30, 30)),
        ((16, 64), 32, (16, 64)),
        ((64, 64), 7, (7, 7)),
    ],
)
def test_cap_short_side_sizes(size: tuple[int, int], cap: int, want: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (10, 20, 30))
    assert cap_short_side(image, cap).size == want


def test_capped_pixels_match_an_area_average() -> None:
    # A smooth ramp: any sane downscale agrees with a plain 4x4 block mean to a few levels.
    yy, xx = np.mgrid[0:80, 0:120]
    rgb = np.stack([xx * 2, yy * 3, (xx + yy)], axis=2).astype(np.uint8)  # [80, 120, 3]
    got = np.asarray(cap_short_side(Image.fromarray(rgb), 20)).astype(np.float64)
    block = rgb.astype(np.float64).reshape(20, 4, 30, 4, 3).mean(axis=(1, 3))
    assert got.shape == (20, 30, 3)
    assert np.abs(got - block)[2:-2, 2:-2].max() < 3.0


def test_jpeg_round_trip_and_extensions(tmp_path: Path) -> None:
    rgb = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], 48, 0)
    rgb = np.repeat(rgb, 3, 2)
    data = encode_jpeg(rgb, quality=90)
    assert data[:2] == b"\xff\xd8"
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(back.astype(int) - rgb).mean() < 2.0
    for name in ("a.JPG", "b.jpeg", "c.Png", "d.BMP", "e.gif", "f.TIF", "g.tiff", "h.webp"):
        assert has_image_extension(Path(name)), name
    assert not has_image_extension(Path("notes.txt"))


def test_bad_files_raise(tmp_path: Path) -> None:
    truncated, not_image = write_bad_files(tmp_path)
    for path in (truncated, not_image):
        with pytest.raises(OSError):
            load_rgb(path, max_resolution=512)


def test_pa_in_memory_is_composited_on_white() -> None:
    # PNG cannot store PA, but decoders of other formats can hand one over.
    from fastproto.data_prep.images import to_rgb

    index = np.arange(24, dtype=np.uint8).reshape(4, 6) % 3  # [4, 6] palette indices
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200]], dtype=np.uint8)
    pa = Image.fromarray(index).convert("P")
    pa.putpalette(palette.reshape(-1).tolist())
    pa = pa.convert("PA")
    alpha = np.tile(np.array([0, 51, 102, 153, 204, 255], dtype=np.uint8), (4, 1))  # [4, 6]
    pa.putalpha(Image.fromarray(alpha))
    got = np.asarray(to_rgb(pa)).astype(np.float64)
    a = alpha[..., None] / 255.0
    want = palette[index] * a + 255.0 * (1.0 - a)
    assert np.abs(got - want).max() <= 1.0
