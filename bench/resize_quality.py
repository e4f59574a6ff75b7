"""How far each resize mode's crops are from torchvision's filter (PIL bilinear, antialiased).

DINO's recipe resizes crops with torchvision's RandomResizedCrop on PIL images; the folder
backend does exactly that. This script cuts the crops of the multi-crop recipe (2 x 224 +
10 x 96, the loader benchmark's windows) from two kinds of source pixels and reports the
PSNR of each backend filter against PIL's:
  smooth   the loader benchmark's images (upscaled Fashion-MNIST with a faint texture)
  texture  blurred noise (sigma 0.7 px): detail near the pixel scale, where aliasing shows
Filters: "antialias" FFCV (OpenCV INTER_AREA), "fast" FFCV (bilinear where the window
shrinks by less than 2x, INTER_AREA otherwise), and plain bilinear for every crop (what
a resize with no antialiasing at all would give). Deterministic; no timing.

    .venv/bin/python bench/resize_quality.py            # table + rows in bench/results/
    .venv/bin/python bench/resize_quality.py --smoke    # 4 images, prints only
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, Row, append_rows, make_row  # noqa: E402
from loader_throughput import write_tree  # noqa: E402

from fastproto.data import MultiCropRecipe  # noqa: E402
from fastproto.data.crops import bilinear_suffices, sample_windows  # noqa: E402

Resize = Callable[[np.ndarray, int, int, int, int, np.ndarray], None]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def filters() -> dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]]:
    """name -> f(image [H, W, 3], window (top, left, h, w), size) -> crop [size, size, 3]."""
    from ffcv.libffcv import resize_crop

    from fastproto.data.cv_linear import load_cv_resize, make_linear_resize, new_headers

    linear, headers = make_linear_resize(load_cv_resize()), new_headers()

    def area(image: np.ndarray, win: np.ndarray, size: int) -> np.ndarray:
        out = np.empty((size, size, 3), np.uint8)
        t, left, h, w = win.tolist()
        resize_crop(image, t, t + h, left, left + w, out)
        return out

    def bilinear(image: np.ndarray, win: np.ndarray, size: int) -> np.ndarray:
        out = np.empty((size, size, 3), np.uint8)
        t, left, h, w = win.tolist()
        linear(image, t, left, h, w, out, headers)
        return out

    def fast(image: np.ndarray, win: np.ndarray, size: int) -> np.ndarray:
        suffices = bilinear_suffices(int(win[2]), int(win[3]), size)
        return bilinear(image, win, size) if suffices else area(image, win, size)

    return {"antialias (ffcv, area)": area, "fast (ffcv)": fast, "bilinear everywhere": bilinear}


def sources(data_dir: Path, n: int) -> dict[str, list[np.ndarray]]:
    tree = data_dir / f"tree{n}"
    if not (tree / "train").is_dir():
        write_tree(tree, n)
    files = sorted((tree / "train").rglob("*.jpg"))[:n]
    smooth = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    rng = np.random.default_rng(0)
    texture = []
    for im in smooth:
        noise = torch.from_numpy(rng.integers(0, 256, im.shape).astype(np.float32))
        blurred = _blur(noise.permute(2, 0, 1)[None], sigma=0.7)[0].permute(1, 2, 0)
        texture.append(np.ascontiguousarray(blurred.clamp(0, 255).round().to(torch.uint8).numpy()))
    return {"smooth": smooth, "texture": texture}


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from fastproto.data.blur import gaussian_blur

    return gaussian_blur(x / 255, torch.tensor([sigma]), 5) * 255


def run(args: argparse.Namespace) -> list[Row]:
    recipe = MultiCropRecipe(num_local=10)
    sizes = [recipe.crop_size(c) for c in range(recipe.num_crops)]
    cpu = torch.device("cpu")
    rows = []
    print(f"{'source':8} {'filter':24} {'PSNR vs PIL: median':>20} {'p5':>6} {'min':>6}  (dB)")
    for kind, images in sources(Path(args.data_dir), args.images).items():
        hs = np.array([im.shape[0] for im in images])
        ws = np.array([im.shape[1] for im in images])
        win = sample_windows(recipe, 0, 0, np.arange(len(images)), hs, ws)  # [n, C, 4]
        for name, resize in filters().items():
            scores = []
            for i, image in enumerate(images):
                pil = Image.fromarray(image)
                for c, w in enumerate(win[i]):
                    t, left, h, wd = w.tolist()
                    ref = pil.resize(
                        (sizes[c], sizes[c]),
                        Image.Resampling.BILINEAR,
                        box=(left, t, left + wd, t + h),
                    )
                    scores.append(psnr(resize(image, w, sizes[c]), np.asarray(ref)))
            med, p5, low = np.median(scores), np.quantile(scores, 0.05), min(scores)
            print(f"{kind:8} {name:24} {med:20.1f} {p5:6.1f} {low:6.1f}")
            label = f"2x224+10x96 {kind} n{len(images)}"
            rows.append(
                make_row("resize_quality", name, label, "psnr_vs_pil_median", "dB", float(med), cpu)
            )
            rows.append(
                make_row("resize_quality", name, label, "psnr_vs_pil_p5", "dB", float(p5), cpu)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="4 images, print only")
    parser.add_argument("--images", type=int, default=64, help="source images per kind")
    parser.add_argument(
        "--data-dir",
        default="/tmp/fastproto-bench-loader",
        help="where the loader benchmark keeps its images",
    )
    args = parser.parse_args()
    if args.smoke:
        args.images = 4
    rows = run(args)
    if not args.smoke:
        append_rows(RESULTS_DIR / "resize_quality_cpu.csv", rows)
        print(f"\nappended {len(rows)} rows to {RESULTS_DIR / 'resize_quality_cpu.csv'}")


if __name__ == "__main__":
    main()
