"""Peak GPU memory and images/s of one full iBOT training step against the number of prototypes K.

One step = teacher forward, student forward on 2 global (224 px) + 10 local (96 px) crops with
block masks, DINO + iBOT patch loss + KoLeo-proto, backward, clip, AdamW, EMA: the trainer's own
`train_step`, on ViT-S/16 with the Table 6 head (3 layers, 2048 hidden, 256 bottleneck, shared).
For each batch B in {64, 100} and K in the preset, with the materialised `reference` loss and the
streaming loss (`auto`: Triton on GPU), it records peak memory (GB) and images/s, prints a table
laid out like paper 1 Table 12 with the paper's numbers beside ours, and the slope of memory per
1024 prototypes (least squares over K). Each point: one warm-up step, then timed steps (CUDA
events), the peak taken over those plain steps. Rows go to bench/results/train_memory_<device>.csv
as each point is measured.

    .venv/bin/python bench/train_memory.py                   # GPU, fp16 (as Table 12)
    .venv/bin/python bench/train_memory.py --precision bf16
    .venv/bin/python bench/train_memory.py --batch 64 --points reference:1024 auto:65536
    .venv/bin/python bench/train_memory.py --smoke           # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, append_rows, device_slug, make_row, time_and_peak  # noqa: E402

from fastproto.config import load_config  # noqa: E402
from fastproto.data.masking import block_masks  # noqa: E402
from fastproto.train.distributed import DistInfo  # noqa: E402
from fastproto.train.setup import build_state  # noqa: E402
from fastproto.train.step import StepValues, train_step  # noqa: E402

PRESETS = {
    "full": {"batches": (64, 100),
             "ks": (1024, 2048, 4096, 8192, 10240, 32768, 65536, 131072, 262144)},
    "smoke": {"batches": (4,), "ks": (64, 256)},
}  # fmt: skip
# paper 1, Table 12: iBOT ViT-S/16, fp16, GPU memory (GB) by (B, K)
PAPER = {
    (64, 1024): 12.9, (64, 2048): 13.7, (64, 4096): 15.3, (64, 8192): 18.6, (64, 10240): 20.2,
    (100, 1024): 19.7, (100, 2048): 21.0, (100, 4096): 23.5, (100, 8192): 28.6, (100, 10240): 31.1,
}  # fmt: skip
VALUES = StepValues(lr=1e-4, weight_decay=0.04, teacher_temp=0.04, momentum=0.996,
                    freeze_last_layer=False)  # fmt: skip


def make_config(k: int, batch: int, impl: str, precision: str, smoke: bool):  # type: ignore[no-untyped-def]
    items = [f"head.num_prototypes={k}", f"optim.batch_size={batch}",
             f"method.loss_impl={impl!r}", f"run.precision={precision!r}"]  # fmt: skip
    if smoke:
        items += ["model.arch='vit_pico_patch4_28'", "data.global_size=28", "data.local_size=12",
                  "head.hidden_dim=64", "head.bottleneck_dim=32", "run.device='cpu'"]  # fmt: skip
    return load_config(None, items)


def make_inputs(config, device: torch.device):  # type: ignore[no-untyped-def]
    d, b = config.data, config.optim.batch_size
    patch = 4 if config.model.arch.endswith("_28") else 16
    g = torch.randn(d.global_crops * b, 3, d.global_size, d.global_size, device=device)
    loc = torch.randn(d.local_crops * b, 3, d.local_size, d.local_size, device=device)
    grid = d.global_size // patch
    masks = block_masks(d.global_crops * b, (grid, grid), 0.3, 0.2).to(device)
    return g, loc, masks


def measure(k: int, batch: int, impl: str, args: argparse.Namespace, device: torch.device):  # type: ignore[no-untyped-def]
    """-> (peak memory GB or None on CPU, timing of one step) or None when out of memory."""
    config = make_config(k, batch, impl, args.precision, args.smoke)
    try:
        torch.manual_seed(0)
        state = build_state(config, DistInfo(0, 1, 0, device))
        g, loc, masks = make_inputs(config, device)
        # the warm-up step compiles kernels and allocates the optimizer state; no L2 flush
        # (a whole step is far bigger than the cache), so the peak is the step's own
        timing, memory = time_and_peak(lambda: train_step(state, g, loc, masks, VALUES), device,
                                       warmup=1, repeats=args.repeats, flush_l2=False)  # fmt: skip
        return (None if memory is None else memory.peak / 1e9), timing
    except torch.OutOfMemoryError:
        return None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def slope_per_1024(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of memory (GB) against K, per 1024 prototypes."""
    if len(points) < 2:
        return float("nan")
    ks = torch.tensor([p[0] for p in points], dtype=torch.float64)
    mem = torch.tensor([p[1] for p in points], dtype=torch.float64)
    kc = ks - ks.mean()
    return float((kc * (mem - mem.mean())).sum() / (kc * kc).sum()) * 1024


def points(args: argparse.Namespace, ks: tuple[int, ...]) -> list[tuple[str, int]]:
    """(loss impl, K) pairs to run: --points as given, else every impl over the preset's K."""
    if args.points is None:
        return [(impl, k) for impl in args.impls.split(",") for k in ks]
    out = []
    for item in args.points:
        impl, sep, k = item.partition(":")
        if not sep or not k.isdigit():
            raise SystemExit(f"--points takes IMPL:K items such as auto:65536, got {item!r}")
        out.append((impl, int(k)))
    return out


def run_point(batch: int, impl: str, k: int, args: argparse.Namespace, device: torch.device,
              out: Path) -> float | None:  # fmt: skip
    """Measure one point, print its line, append its rows to `out`; -> peak GB (None: no peak)."""
    got = measure(k, batch, impl, args, device)
    shape = f"B={batch},K={k},{args.precision}"
    paper = PAPER.get((batch, k))
    if got is None:
        print(f"{batch:>4} {k:>7} {impl:>9} {paper or '':>9} {'OOM':>8}", flush=True)
        return None
    peak, timing = got
    rate = batch / timing.p50
    rows = [make_row("train_step_ibot_vits16", impl, shape, "images_per_s", "img/s", rate,
                     device)]  # fmt: skip
    if peak is not None:
        rows.append(make_row("train_step_ibot_vits16", impl, shape, "peak_memory", "GB", peak,
                             device))  # fmt: skip
    append_rows(out, rows)  # per point: a run cut short by a time budget keeps what it measured
    ours = f"{peak:.1f}" if peak is not None else "-"
    print(f"{batch:>4} {k:>7} {impl:>9} {paper or '':>9} {ours:>8} {rate:>8.1f}", flush=True)
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run for CI")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"),
                        help="mixed precision of the step (Table 12 used fp16)")  # fmt: skip
    parser.add_argument("--impls", default="reference,auto", help="comma-separated loss impls")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes (default: the preset's)")  # fmt: skip
    parser.add_argument(
        "--points",
        nargs="+",
        default=None,
        metavar="IMPL:K",
        help="run only these (impl, K) points, in this order, e.g. "
        "reference:1024 auto:65536 (overrides --impls and the preset's K)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point")
    parser.add_argument(
        "--out", default=None, help="CSV file (default bench/results/train_memory_<device>.csv)"
    )
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        args.precision = "fp32"
    preset = PRESETS["smoke" if args.smoke else "full"]
    batches = args.batch or preset["batches"]
    out = Path(args.out or RESULTS_DIR / f"train_memory_{device_slug(device)}.csv")
    mem_points: dict[tuple[int, str], list[tuple[int, float]]] = {}
    print(f"{'B':>4} {'K':>7} {'impl':>9} {'paper GB':>9} {'ours GB':>8} {'img/s':>8}")
    for batch in batches:
        for impl, k in points(args, preset["ks"]):
            peak = run_point(batch, impl, k, args, device, out)
            if peak is not None:
                mem_points.setdefault((batch, impl), []).append((k, peak))
    for (batch, impl), pts in mem_points.items():
        print(f"slope B={batch} {impl}: {slope_per_1024(pts):.3f} GB per 1024 prototypes")
    for batch in batches:
        paper_points = [(k, v) for (b, k), v in PAPER.items() if b == batch]
        if paper_points:
            slope = slope_per_1024(paper_points)
            print(f"paper 1 Table 12 slope B={batch}: {slope:.3f} GB per 1024 prototypes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
