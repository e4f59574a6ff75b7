"""Multi-crop loader throughput: images/s and crops/s for ffcv, dali and folder on one image set.

Data: the first N Fashion-MNIST test images (Debian's dataset-fashion-mnist; synthetic blobs of
the same kind when it is missing) upscaled to random sizes between 256 and 500 px per side,
tinted per class and given a faint texture, saved as JPEG (quality 90) in an ImageNet-style
tree, then converted by data_prep to a .beton (FFCV) and webdataset shards (DALI). All three
backends cut the same recipe (2 x 224 + 10 x 96 by default) with the same crop windows, in
each resize mode of the recipe (`--resize`; DALI only in "antialias").

Per backend and worker count: one short warm-up (FFCV compiles its pipeline), then `--epochs`
timed epochs; the table shows the median with the 20th/80th percentiles. A second table
splits the single-thread cost per image into decode and crop+resize (all 12 crops).

    .venv/bin/python bench/loader_throughput.py --smoke          # seconds, for CI
    .venv/bin/python bench/loader_throughput.py --images 512 --workers 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, Row, Timing, append_rows, make_row, percentiles  # noqa: E402

from fastproto.data import MultiCropRecipe, make_loader  # noqa: E402
from fastproto.data.crops import bilinear_suffices, sample_windows  # noqa: E402
from fastproto.data.recipe import RESIZE_MODES  # noqa: E402

BACKENDS = ("folder", "ffcv", "dali")
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
FMNIST_LABELS = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


def _grey_pictures(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[n, 28, 28] uint8 pictures and [n] labels (Fashion-MNIST if installed)."""
    if FMNIST.is_file() and FMNIST_LABELS.is_file():
        from fastproto.data_prep.fashion_mnist import read_idx

        images, labels = read_idx(FMNIST), read_idx(FMNIST_LABELS)
        if len(images) >= n:
            return images[:n], labels[:n].astype(np.int64)
    yy, xx = np.mgrid[0:28, 0:28]
    blobs = [
        np.exp(-((yy - rng.uniform(8, 20)) ** 2 + (xx - rng.uniform(8, 20)) ** 2) / 40) * 255
        for _ in range(n)
    ]
    return np.stack(blobs).astype(np.uint8), rng.integers(0, 10, n)


def write_tree(root: Path, n: int, seed: int = 0) -> None:
    """root/train/<class>/<i>.jpg: n upscaled, tinted pictures of 256..500 px per side."""
    rng = np.random.default_rng(seed)
    grey, labels = _grey_pictures(n, rng)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(256, 501, size=2))
        up = np.asarray(Image.fromarray(grey[i]).resize((w, h), Image.Resampling.BICUBIC), float)
        tint = np.array([1.0, 0.5 + 0.05 * labels[i], 0.9 - 0.05 * labels[i]])
        texture = rng.normal(0, 6, size=(h, w, 1))
        rgb = np.clip(up[..., None] * tint + 30 + texture, 0, 255).astype(np.uint8)
        folder = root / "train" / f"class{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{i:06d}.jpg", quality=90)


def prepare(data_dir: Path, n: int) -> dict[str, Path]:
    """The image tree plus its FFCV and DALI conversions (reused when already there)."""
    from fastproto.data_prep.prepare import prepare_imagenet

    tree = data_dir / f"tree{n}"
    if not (tree / "train").is_dir():
        write_tree(tree, n)
    paths = {"folder": tree}
    for fmt in ("ffcv", "dali"):
        paths[fmt] = prepare_imagenet(tree, data_dir / f"{fmt}{n}", fmt, jpeg_quality=90)
    return paths


def time_epochs(loader, epochs: int) -> tuple[Timing, int]:  # type: ignore[no-untyped-def]
    """Seconds per epoch (after a two-batch warm-up) and images per epoch."""
    loader.resume_from(max(0, len(loader) - 2))
    for _ in loader:  # warm-up: compiles, starts workers, fills caches
        pass
    samples, images = [], 0
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        images = sum(batch.batch_size for batch in loader)
        samples.append(time.perf_counter() - start)
    return percentiles(samples), images


def _per_image_ms(fn: Callable[[], object], count: int) -> float:
    fn()  # warm-up: compiles numba code, fills caches
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count * 1e3


def breakdown(tree: Path, recipe: MultiCropRecipe, count: int) -> dict[str, tuple[float, float]]:
    """Single-thread ms per image: (decode, crop + resize of all crops) per backend's library.

    The folder column cuts with the folder backend's own `cut_crops` (PIL resize or, in the
    fast mode, PIL's bilinear transform; both include the copy into a tensor).
    """
    from fastproto.data.folder import cut_crops

    files = sorted((tree / "train").rglob("*.jpg"))[:count]
    data = [np.frombuffer(f.read_bytes(), np.uint8) for f in files]
    pil = [Image.open(f).convert("RGB") for f in files]
    hs = np.array([im.height for im in pil])
    ws = np.array([im.width for im in pil])
    win = sample_windows(recipe, 0, 0, np.arange(len(files)), hs, ws)  # [n, C, 4]
    sizes = [recipe.crop_size(c) for c in range(recipe.num_crops)]
    it = iter(range(10**9))
    out: dict[str, tuple[float, float]] = {}

    def pil_decode() -> None:
        i = next(it) % len(files)
        Image.open(files[i]).convert("RGB")

    def pil_crops() -> None:
        i = next(it) % len(files)
        cut_crops(pil[i], win[i], recipe)

    out[f"folder (PIL) resize={recipe.resize}"] = (
        _per_image_ms(pil_decode, count),
        _per_image_ms(pil_crops, count),
    )
    try:
        from ffcv.libffcv import imdecode, resize_crop

        from fastproto.data.cv_linear import load_cv_resize, make_linear_resize, new_headers
    except ImportError:
        return out
    scratch = [np.empty((h, w, 3), np.uint8) for h, w in zip(hs, ws, strict=True)]
    crops = [np.empty((size, size, 3), np.uint8) for size in sizes]
    linear, headers = make_linear_resize(load_cv_resize()), new_headers()

    def ffcv_decode() -> None:
        i = next(it) % len(files)
        imdecode(data[i], scratch[i], hs[i], ws[i], hs[i], ws[i], 0, 0, 1, 1, False, False)

    def ffcv_crops() -> None:  # the choice MultiCropDecode makes per crop
        i = next(it) % len(files)
        for c, (t, left, h, w) in enumerate(win[i].tolist()):
            if recipe.resize == "fast" and bilinear_suffices(h, w, sizes[c]):
                linear(scratch[i], t, left, h, w, crops[c], headers)
            else:
                resize_crop(scratch[i], t, t + h, left, left + w, crops[c])

    out[f"ffcv (libffcv imdecode, crop-resize) resize={recipe.resize}"] = (
        _per_image_ms(ffcv_decode, count),
        _per_image_ms(ffcv_crops, count),
    )
    return out


def run(args: argparse.Namespace) -> list[Row]:
    paths = prepare(Path(args.data_dir), args.images)
    cpu = torch.device("cpu")
    rows, table = [], []
    for mode in args.resize:
        recipe = MultiCropRecipe(num_local=args.num_local, resize=mode)
        shape = f"{recipe.num_global}x{recipe.global_size}+{recipe.num_local}x{recipe.local_size}"
        for backend in args.backends:
            if backend == "dali" and mode != "antialias":
                continue  # DALI has no per-crop filter choice (see the recipe's docstring)
            for workers in args.workers:
                loader = make_loader(
                    paths[backend], backend, args.batch_size, recipe, workers=workers
                )
                timing, images = time_epochs(loader, args.epochs)
                ips = Timing(images / timing.p50, images / timing.p80, images / timing.p20)
                cps = Timing(*(v * recipe.num_crops for v in (ips.p50, ips.p20, ips.p80)))
                impl = f"{backend} workers={workers}"
                impl += "" if mode == "antialias" else f" resize={mode}"
                label = f"{shape} b{args.batch_size} n{images}"
                for metric, unit, value in (
                    ("images_per_s", "img/s", ips),
                    ("crops_per_s", "crop/s", cps),
                ):
                    rows.append(make_row("multicrop_loader", impl, label, metric, unit, value, cpu))
                table.append((f"{backend} {mode}", workers, ips, cps.p50))
                del loader
    print(
        f"\n{'backend, resize':18} {'workers':>7} {'img/s p50':>10} {'p20..p80':>16} {'crops/s':>9}"
    )
    for name, workers, ips, cps_p50 in table:
        spread = f"{ips.p20:.1f}..{ips.p80:.1f}"
        print(f"{name:18} {workers:7d} {ips.p50:10.1f} {spread:>16} {cps_p50:9.0f}")
    for mode in args.resize:
        recipe = MultiCropRecipe(num_local=args.num_local, resize=mode)
        shape = f"{recipe.num_global}x{recipe.global_size}+{recipe.num_local}x{recipe.local_size}"
        parts = breakdown(paths["folder"], recipe, 8 if args.smoke else 64)
        print(f"\nsingle-thread ms per image ({shape}): {'decode':>8} {'crop+resize':>12}")
        for name, (dec, crop) in parts.items():
            print(f"  {name:58} {dec:8.2f} {crop:12.2f}")
            for metric, value in (("decode_ms_per_image", dec), ("crop_resize_ms_per_image", crop)):
                rows.append(
                    make_row("multicrop_decode_crop", name, shape, metric, "ms", value, cpu)
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (seconds)")
    parser.add_argument("--images", type=int, default=512, help="images in the set")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument(
        "--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="backends to time"
    )
    parser.add_argument("--num-local", type=int, default=10, help="local crops per image")
    parser.add_argument(
        "--resize",
        nargs="+",
        default=list(RESIZE_MODES),
        choices=RESIZE_MODES,
        help="crop filter modes to time (see MultiCropRecipe)",
    )
    parser.add_argument(
        "--data-dir",
        default="/tmp/fastproto-bench-loader",
        help="where the generated images and conversions are kept",
    )
    parser.add_argument("--no-csv", action="store_true", help="print only, append no rows")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch_size, args.epochs, args.workers = 48, 8, 1, [1]
    rows = run(args)
    if not args.no_csv and not args.smoke:
        append_rows(RESULTS_DIR / "loader_throughput_cpu.csv", rows)
        print(f"\nappended {len(rows)} rows to {RESULTS_DIR / 'loader_throughput_cpu.csv'}")


if __name__ == "__main__":
    main()
