"""Loader tests: crop sampler, rank shards, resume, and the three backends on one image set.

The images encode their own coordinates (R = 255 x / (W - 1), G = 255 y / (H - 1), B from the
label), so the crop a backend returns can be checked against the window the sampler says it
should have cut, computed here independently as a linear function of the output pixel.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastproto.data import MultiCropRecipe, make_loader
from fastproto.data.base import Loader
from fastproto.data.crops import crop_uniform, sample_windows
from fastproto.data.order import rank_order

RECIPE = MultiCropRecipe(global_size=32, local_size=16, num_local=2)
SIZES = [(48, 64), (72, 56), (60, 60), (96, 50), (50, 90), (64, 80), (80, 64), (56, 72)]
NUM_IMAGES = 16
BATCH = 4


def _gradient(h: int, w: int, label: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    blue = np.full((h, w), 60.0 + 100.0 * label)
    rgb = np.stack([255 * x / (w - 1), 255 * y / (h - 1), blue], axis=-1)
    return np.round(rgb).astype(np.uint8)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<class>/<file>.jpg with NUM_IMAGES gradient images in 2 classes."""
    root = tmp_path_factory.mktemp("grad")
    for i in range(NUM_IMAGES):
        label = i % 2
        h, w = SIZES[i % len(SIZES)]
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gradient(h, w, label)).save(folder / f"img{i:03d}.jpg", quality=97)
    return root


def _tree_order(root: Path) -> list[tuple[int, int, int]]:
    """(label, height, width) per split index: class order, then file name."""
    rows = []
    for label, folder in enumerate(sorted((root / "train").iterdir())):
        for file in sorted(folder.iterdir()):
            with Image.open(file) as im:
                rows.append((label, im.height, im.width))
    return rows


@pytest.fixture(scope="module")
def converted(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same images as FFCV and DALI outputs, written by data_prep."""
    pytest.importorskip("ffcv")
    from fastproto.data_prep.prepare import prepare_imagenet

    out = tmp_path_factory.mktemp("converted")
    return {
        "folder": image_root,
        "ffcv": prepare_imagenet(image_root, out / "ffcv", "ffcv", jpeg_quality=97),
        "dali": prepare_imagenet(image_root, out / "dali", "dali", jpeg_quality=97, shard_size=6),
    }


# ---- the crop sampler ------------------------------------------------------------------


def _reference_window(seed, epoch, index, crop, height, width, scale, ratio):  # type: ignore[no-untyped-def]
    """torchvision's RandomResizedCrop.get_params, written out, fed the sampler's uniforms."""
    area = height * width
    for attempt in range(10):
        u_s = crop_uniform(seed, epoch, index, crop, 2 * attempt)
        u_r = crop_uniform(seed, epoch, index, crop, 2 * attempt + 1)
        target = area * (scale[0] + (scale[1] - scale[0]) * u_s)
        log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_r
        w = int(math.floor(math.sqrt(target * math.exp(log_r)) + 0.5))
        h = int(math.floor(math.sqrt(target / math.exp(log_r)) + 0.5))
        if 0 < w <= width and 0 < h <= height:
            top = int(crop_uniform(seed, epoch, index, crop, 20) * (height - h + 1))
            left = int(crop_uniform(seed, epoch, index, crop, 21) * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(math.floor(width / ratio[0] + 0.5))
    elif in_ratio > ratio[1]:
        w, h = int(math.floor(height * ratio[1] + 0.5)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height,width", [(100, 100), (37, 211), (500, 333), (9, 7)])
def test_windows_match_randomresizedcrop_and_stay_in_range(height: int, width: int) -> None:
    indices = np.arange(200)
    heights, widths = np.full(200, height), np.full(200, width)
    windows = sample_windows(RECIPE, 3, 1, indices, heights, widths)  # [200, C, 4]
    for i in range(0, 200, 7):
        for c in range(RECIPE.num_crops):
            ref = _reference_window(3, 1, i, c, height, width, RECIPE.crop_scale(c), RECIPE.ratio)
            assert tuple(windows[i, c]) == ref
    top, left, h, w = (windows[..., k] for k in range(4))
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    if height == width == 100:  # no fallback here: areas and ratios obey the recipe (+ rounding)
        frac = h * w / (height * width)
        for c in range(RECIPE.num_crops):
            lo, hi = RECIPE.crop_scale(c)
            assert frac[:, c].min() >= lo * 0.9 and frac[:, c].max() <= hi * 1.05
        ratio = w / h
        assert ratio.min() >= RECIPE.ratio[0] * 0.9 and ratio.max() <= RECIPE.ratio[1] * 1.1


def test_windows_deterministic_per_key_and_new_each_epoch() -> None:
    idx, hs, ws = np.arange(50), np.full(50, 120), np.full(50, 90)
    a = sample_windows(RECIPE, 7, 2, idx, hs, ws)
    assert np.array_equal(a, sample_windows(RECIPE, 7, 2, idx, hs, ws))
    assert np.array_equal(a[10:20], sample_windows(RECIPE, 7, 2, idx[10:20], hs[10:20], ws[10:20]))
    assert (a != sample_windows(RECIPE, 7, 3, idx, hs, ws)).any(axis=-1).mean() > 0.9
    assert (a != sample_windows(RECIPE, 8, 2, idx, hs, ws)).any(axis=-1).mean() > 0.9


def test_recipe_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="global_scale"):
        MultiCropRecipe(global_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="local_scale"):
        MultiCropRecipe(local_scale=(0.1, 1.5))
    with pytest.raises(ValueError, match="num_global"):
        MultiCropRecipe(num_global=0)
    with pytest.raises(ValueError, match="ratio"):
        MultiCropRecipe(ratio=(0.0, 1.0))


# ---- order and shards -------------------------------------------------------------------


@pytest.mark.parametrize("n,drop_last", [(10, True), (11, True), (11, False)])
def test_two_ranks_disjoint_complete_and_reshuffled(n: int, drop_last: bool) -> None:
    r0 = rank_order(n, 5, 0, 0, 2, drop_last)
    r1 = rank_order(n, 5, 0, 1, 2, drop_last)
    assert len(r0) == len(r1)
    union = set(r0.tolist()) | set(r1.tolist())
    if drop_last:
        assert not set(r0.tolist()) & set(r1.tolist())
        assert len(union) == (n // 2) * 2
    else:
        assert union == set(range(n))  # one image repeats to pad the shards to equal size
    if n % 2 == 0:
        assert union == set(range(n))
    assert not np.array_equal(r0, rank_order(n, 5, 1, 0, 2, drop_last))


def test_unsigned_image_count_pads_like_a_python_int() -> None:
    # FFCV reports dataset lengths as numpy uint64, where -(-n // w) wraps around.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unsigned = rank_order(np.uint64(11), 5, 0, 1, np.uint64(2), drop_last=False)
    assert np.array_equal(unsigned, rank_order(11, 5, 0, 1, 2, drop_last=False))
    assert len(unsigned) == 6


class _CountOnly(Loader):
    def _iterate(self, batches, epoch):  # type: ignore[no-untyped-def]
        yield from ()


@pytest.mark.parametrize("drop_last", [True, False])
def test_a_numpy_image_count_becomes_a_python_int(drop_last: bool) -> None:
    # FFCV's count is a uint64; under NumPy 1.x, uint64 // int gave a float64 and len() failed
    args = (BATCH, RECIPE, 1, 2, 0, drop_last, torch.device("cpu"))
    counted = _CountOnly(np.uint64(11), *args)
    assert type(counted.num_images) is int
    assert len(counted) == len(_CountOnly(11, *args)) == (1 if drop_last else 2)  # shard 5 or 6
    assert counted.order().tolist() == _CountOnly(11, *args).order().tolist()


def test_folder_loader_ranks_see_disjoint_halves(image_root: Path) -> None:
    seen = []
    for rank in (0, 1):
        loader = make_loader(image_root, "folder", 2, RECIPE, rank=rank, world_size=2, workers=0)
        loader.set_epoch(1)
        seen.append(torch.cat([b.indices for b in loader]).tolist())
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(NUM_IMAGES))


def test_make_loader_rejects_bad_arguments(image_root: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        make_loader(image_root, "pillow", 4, RECIPE)
    with pytest.raises(ValueError, match="rank"):
        make_loader(image_root, "folder", 4, RECIPE, rank=2, world_size=2)
    with pytest.raises(ValueError, match="does not exist"):
        make_loader(image_root / "nope", "folder", 4, RECIPE)


# ---- backends -----------------------------------------------------------------------------


def _expected_crop(window: np.ndarray, size: int, h: int, w: int, label: int) -> np.ndarray:
    """[3, size, size] float: the gradient image resampled at the crop's pixel centres."""
    top, left, ch, cw = (float(v) for v in window)
    centres = (np.arange(size) + 0.5) / size
    ys = np.clip(top + centres * ch - 0.5, 0, h - 1)
    xs = np.clip(left + centres * cw - 0.5, 0, w - 1)
    red = np.broadcast_to(255 * xs[None, :] / (w - 1), (size, size))
    green = np.broadcast_to(255 * ys[:, None] / (h - 1), (size, size))
    blue = np.full((size, size), 60.0 + 100.0 * label)
    return np.stack([red, green, blue])


def _check_batches(batches: list, rows: list[tuple[int, int, int]], epoch: int) -> None:
    g = RECIPE.num_global
    for batch in batches:
        b = batch.batch_size
        assert batch.global_crops.shape == (g, b, 3, 32, 32)
        assert batch.local_crops.shape == (RECIPE.num_local, b, 3, 16, 16)
        assert batch.global_crops.dtype == torch.uint8 and batch.labels.dtype == torch.int64
        idx = batch.indices.numpy()
        labels = [rows[i][0] for i in idx]
        assert batch.labels.tolist() == labels
        hs = np.array([rows[i][1] for i in idx])
        ws = np.array([rows[i][2] for i in idx])
        windows = sample_windows(RECIPE, 0, epoch, idx, hs, ws)
        for c in range(RECIPE.num_crops):
            crops = batch.global_crops[c] if c < g else batch.local_crops[c - g]
            for j in range(b):
                exp = _expected_crop(windows[j, c], RECIPE.crop_size(c), hs[j], ws[j], labels[j])
                err = np.abs(crops[j].double().numpy() - exp)
                assert err.mean() < 4.0, (c, j, err.mean())


def _paths(request: pytest.FixtureRequest, backend: str) -> dict[str, Path]:
    if backend == "folder":
        return {"folder": request.getfixturevalue("image_root")}
    pytest.importorskip("nvidia.dali" if backend == "dali" else "ffcv")
    return request.getfixturevalue("converted")


@pytest.mark.parametrize(
    "backend",
    [
        "folder",
        pytest.param("ffcv", marks=pytest.mark.slow),
        pytest.param("dali", marks=pytest.mark.slow),
    ],
)
def test_backend_cuts_the_sampled_windows(backend: str, request: pytest.FixtureRequest) -> None:
    paths = _paths(request, backend)
    rows = _tree_order(paths["folder"])
    loader = make_loader(paths[backend], backend, BATCH, RECIPE, workers=1)
    assert len(loader) == NUM_IMAGES // BATCH
    loader.set_epoch(2)
    full = list(loader)
    assert sorted(torch.cat([b.indices for b in full]).tolist()) == list(range(NUM_IMAGES))
    _check_batches(full, rows, epoch=2)
    loader.resume_from(2)  # a resumed run gets exactly the remaining batches
    rest = list(loader)
    assert len(rest) == len(full) - 2
    for a, b in zip(rest, full[2:], strict=True):
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.global_crops, b.global_crops)
        assert torch.equal(a.local_crops, b.local_crops)
    assert len(list(loader)) == len(full)  # the resume point applies to one iteration only


@pytest.mark.slow
def test_backends_agree_on_order_and_pixels(converted: dict[str, Path]) -> None:
    pytest.importorskip("nvidia.dali")
    batches = {}
    for backend in ("folder", "ffcv", "dali"):
        loader = make_loader(converted[backend], backend, BATCH, RECIPE, workers=1)
        stream = iter(loader)
        batches[backend] = next(stream)
        stream.close()  # stops the backend's prefetching now, not at garbage collection
    ref = batches["folder"]
    for backend in ("ffcv", "dali"):
        other = batches[backend]
        assert torch.equal(other.indices, ref.indices) and torch.equal(other.labels, ref.labels)
        diff = (other.global_crops.double() - ref.global_crops.double()).abs().mean()
        assert diff < 4.0, (backend, diff)


# ---- round trip of data_prep's fixture tree (modes, formats, EXIF) ---------------------------

FULL = MultiCropRecipe(
    num_global=1, global_size=40, global_scale=(1.0, 1.0), num_local=0, ratio=(0.25, 4.0)
)


@pytest.fixture(scope="module")
def fixture_tree(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from image_fixtures import write_imagenet_tree

    return write_imagenet_tree(tmp_path_factory.mktemp("fixtures"), per_class={"train": 5})


@pytest.mark.parametrize(
    "backend,tol",
    [
        ("folder", 1.0),
        pytest.param("ffcv", 8.0, marks=pytest.mark.slow),
        pytest.param("dali", 8.0, marks=pytest.mark.slow),
    ],
)
def test_full_image_round_trip(backend: str, tol: float, fixture_tree, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Scale 1: every crop is the whole image; compare with the fixture's expected pixels."""
    path = fixture_tree.root
    if backend != "folder":
        pytest.importorskip("nvidia.dali" if backend == "dali" else "ffcv")
        from fastproto.data_prep.prepare import prepare_imagenet

        path = prepare_imagenet(fixture_tree.root, tmp_path / backend, backend)
    ordered = fixture_tree.ordered("train")
    loader = make_loader(path, backend, 5, FULL, workers=0 if backend == "folder" else 1)
    seen = 0
    for batch in loader:
        for j, i in enumerate(batch.indices.tolist()):
            image = ordered[i]
            assert batch.labels[j].item() == fixture_tree.label(image)
            h, w = image.expected.shape[:2]
            hw = (np.array([h]), np.array([w]))
            top, left, ch, cw = sample_windows(FULL, 0, 0, np.array([i]), *hw)[0, 0].tolist()
            assert ch >= h - 1 and cw >= w - 1  # the whole image (up to rounding)
            want = Image.fromarray(image.expected).resize(
                (40, 40), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)
            )
            got = batch.global_crops[0, j].permute(1, 2, 0).double().numpy()
            err = np.abs(got - np.asarray(want, dtype=np.float64)).mean()
            limit = tol if image.lossless else max(tol, 4.0)  # the JPEG files differ themselves
            assert err < limit, (image.mode, image.path.name, err)
            seen += 1
    assert seen == len(ordered)
