"""The recipe's resize modes: which filter scales each crop window, per backend.

Images are fine stripes plus noise, where bilinear sampling and antialiasing filters give
clearly different pixels, so a backend that used the wrong filter for a crop fails. The
expected crops come from the opencv-python wheel (an OpenCV build separate from the one
libffcv links) applied to the exact source pixels: the FFCV data here is written raw (no
JPEG) and the folder images are PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastproto.data import MultiCropRecipe, make_loader
from fastproto.data.batch import Batch
from fastproto.data.crops import bilinear_suffices, sample_windows

SIZES = [(70, 90), (120, 64), (96, 96), (60, 110), (100, 80), (88, 120)]
RECIPES = {
    mode: MultiCropRecipe(global_size=32, local_size=16, num_local=4, resize=mode)
    for mode in ("antialias", "fast")
}


def _stripes(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: 1-pixel vertical stripes, 2-pixel horizontal ones, and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 200.0 * (x % 2) + 40.0 * ((y // 2) % 2)
    rgb = base[..., None] + rng.normal(0, 10, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


IMAGES = [_stripes(h, w, i) for i, (h, w) in enumerate(SIZES)]


def _batches(path: Path, backend: str, mode: str) -> list[Batch]:
    loader = make_loader(path, backend, 3, RECIPES[mode], workers=1)
    loader.set_epoch(1)
    return list(loader)


def _expected(image: np.ndarray, window: np.ndarray, size: int, linear: bool) -> np.ndarray:
    import cv2

    top, left, h, w = window.tolist()
    interp = cv2.INTER_LINEAR if linear else cv2.INTER_AREA
    return cv2.resize(image[top : top + h, left : left + w], (size, size), interpolation=interp)


def _crops_and_windows(batches: list[Batch], recipe: MultiCropRecipe):  # type: ignore[no-untyped-def]
    """Yield (image index, crop index, window, HWC crop as int array)."""
    hs = np.array([im.shape[0] for im in IMAGES])
    ws = np.array([im.shape[1] for im in IMAGES])
    g = recipe.num_global
    for batch in batches:
        idx = batch.indices.numpy()
        windows = sample_windows(recipe, 0, 1, idx, hs[idx], ws[idx])
        for c in range(recipe.num_crops):
            crops = batch.global_crops[c] if c < g else batch.local_crops[c - g]
            for j, i in enumerate(idx.tolist()):
                yield i, c, windows[j, c], crops[j].permute(1, 2, 0).numpy().astype(int)


def test_bilinear_suffices_below_twice_the_size_on_both_axes() -> None:
    assert bilinear_suffices(63, 63, 32) and bilinear_suffices(10, 50, 32)
    assert not bilinear_suffices(64, 10, 32) and not bilinear_suffices(10, 64, 32)


def test_recipe_rejects_an_unknown_resize_mode() -> None:
    with pytest.raises(ValueError, match="resize='cubic' is unknown"):
        MultiCropRecipe(resize="cubic")


@pytest.fixture(scope="module")
def raw_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .beton of the stripe images stored raw (exact pixels), labels 0.."""
    pytest.importorskip("ffcv")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = tmp_path_factory.mktemp("raw") / "train.beton"
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
    samples = [(image, i) for i, image in enumerate(IMAGES)]
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(samples)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["antialias", "fast"])
def test_ffcv_uses_the_filter_the_mode_names(raw_beton: Path, mode: str) -> None:
    recipe = RECIPES[mode]
    kinds = {True: 0, False: 0}
    for i, c, window, got in _crops_and_windows(_batches(raw_beton, "ffcv", mode), recipe):
        size = recipe.crop_size(c)
        h, w = int(window[2]), int(window[3])
        linear = mode == "fast" and bilinear_suffices(h, w, size)
        upscaled = h <= size and w <= size  # OpenCV's area filter is bilinear there too
        kinds[linear] += not upscaled
        want = _expected(IMAGES[i], window, size, linear)
        assert np.abs(got - want).max() <= 1, (mode, i, c, window)
    if mode == "fast":  # both filters were exercised on shrunk windows
        assert kinds[True] > 0 and kinds[False] > 0, kinds


@pytest.fixture(scope="module")
def png_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("png")
    folder = root / "train" / "stripes"
    folder.mkdir(parents=True)
    for i, image in enumerate(IMAGES):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def test_folder_fast_mode_is_bilinear_where_it_suffices(png_tree: Path) -> None:
    fast = list(_crops_and_windows(_batches(png_tree, "folder", "fast"), RECIPES["fast"]))
    smooth = list(_crops_and_windows(_batches(png_tree, "folder", "antialias"), RECIPES["fast"]))
    shrunk_linear = 0
    for (i, c, window, got), (_, _, _, antialiased) in zip(fast, smooth, strict=True):
        size = RECIPES["fast"].crop_size(c)
        h, w = int(window[2]), int(window[3])
        if not bilinear_suffices(h, w, size):
            assert np.array_equal(got, antialiased)  # the antialiasing filter, unchanged
            continue
        assert np.abs(got - _expected(IMAGES[i], window, size, linear=True)).max() <= 1
        if w > size * 1.2:  # visibly shrunk across the 1-pixel stripes
            shrunk_linear += 1
            assert np.abs(got - antialiased).mean() > 10, (i, c, window)
    assert shrunk_linear > 0


def test_dali_refuses_the_fast_mode(tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="not available for the dali backend"):
        make_loader(tmp_path, "dali", 2, RECIPES["fast"], workers=1)


@pytest.mark.slow
def test_ffcv_batches_outlive_the_reused_buffers(raw_beton: Path) -> None:
    """Batches are channels-last views; they must own their memory, not FFCV's buffers.

    With one image per batch, FFCV cycles its few output slots several times over the epoch,
    so a batch that still pointed into a slot would have been overwritten by the end.
    """
    loader = make_loader(raw_beton, "ffcv", 1, RECIPES["antialias"], workers=1)
    loader.set_epoch(1)
    kept, snapshots = [], []
    for batch in loader:
        kept.append(batch)
        snapshots.append((batch.global_crops.clone(), batch.local_crops.clone()))
    assert len(kept) == len(IMAGES)
    assert not kept[0].global_crops.is_contiguous()  # a view: no transpose was paid for
    for batch, (glob, local) in zip(kept, snapshots, strict=True):
        assert torch.equal(batch.global_crops, glob) and torch.equal(batch.local_crops, local)


def test_cv_linear_matches_opencv_on_windows_anywhere() -> None:
    """The C-API binding: windows at edges, upscaled, 1 x 1, on a row-strided view."""
    pytest.importorskip("ffcv")
    import cv2

    from fastproto.data.cv_linear import load_cv_resize, make_linear_resize, new_headers

    resize, headers = make_linear_resize(load_cv_resize()), new_headers()
    big = _stripes(80, 130, seed=7)
    image = big[:, 10:110]  # rows strided by 130 pixels, width 100
    out = np.empty((24, 24, 3), np.uint8)
    for top, left, h, w in [(0, 0, 80, 100), (30, 52, 50, 48), (5, 9, 10, 13), (79, 99, 1, 1)]:
        resize(image, top, left, h, w, out, headers)
        window = np.ascontiguousarray(image[top : top + h, left : left + w])
        want = cv2.resize(window, (24, 24), interpolation=cv2.INTER_LINEAR)
        assert np.abs(out.astype(int) - want).max() <= 1, (top, left, h, w)
    with pytest.raises(ValueError, match="packed HWC"):
        resize(np.ascontiguousarray(image.transpose(1, 0, 2))[:, ::2], 0, 0, 8, 8, out, headers)


def test_config_offers_the_recipe_modes_and_passes_them_on() -> None:
    from fastproto.config import CHOICES, TrainConfig
    from fastproto.data.recipe import RESIZE_MODES
    from fastproto.train.inputs import crop_recipe

    assert CHOICES["data.resize"] == RESIZE_MODES
    config = TrainConfig()
    config.data.resize = "fast"
    assert crop_recipe(config).resize == "fast"
