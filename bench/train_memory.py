"""Memory and time of one full iBOT training step against the number of prototypes K (Table 12).

One step = teacher forward, student forward on 2 global (224 px) + 10 local (96 px) crops with
block masks, DINO + iBOT patch loss + KoLeo-proto, backward, clip, AdamW, EMA: the trainer's own
`train_step`, on ViT-S/16 with the Table 6 head (3 layers, 2048 hidden, 256 bottleneck, shared).
Every (B, impl, K) point runs in a fresh subprocess, so no point inherits another's allocator
state. Rows go to bench/results/train_memory_<device>.csv as each point is measured; the
markdown table (laid out like paper 1 Table 12, the paper's column beside ours, least-squares
slopes per 1024 prototypes) and a PNG of memory against K are rebuilt from that CSV at the end.

What is measured:
  cuda: peak allocated memory (GB) over plain timed steps after one warm-up step, as Table 12.
  cpu:  the peak RSS growth of one step over the same process's RSS after `build_state` (MB):
        the optimizer state (AdamW's two moments, which torch creates in the first step) is
        allocated first by an lr = 0 step on zero gradients, so the growth holds the moments,
        the gradients and everything transient, and not the weights the process already held.
  head-only (impl "auto", `--head-only`): the same step with the ViT's transformer blocks
        removed (patch embedding, head, losses, KoLeo-proto, optimizer, EMA), so that K = 2^20
        fits on the CPU; the row counts are the recipe's (768 CLS rows, ~7600 masked tokens).

A point whose memory would exceed what the machine has free is skipped with a message: before
launch when the points already measured for that impl predict it, else by the child itself,
which watches its own RSS and stops before the kernel's OOM killer would.

    .venv/bin/python bench/train_memory.py --device cpu            # the CPU table, ~1 hour
    .venv/bin/python bench/train_memory.py                         # GPU, fp16 (as Table 12)
    .venv/bin/python bench/train_memory.py --points reference:1024 auto:65536 head:1048576
    .venv/bin/python bench/train_memory.py --smoke                 # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, append_rows, make_row  # noqa: E402
from train_memory_point import SAFETY, PointResult, available_mb  # noqa: E402
from train_memory_report import fit_line, write_report  # noqa: E402

OP = "train_step_ibot_vits16"
# paper 1, Table 12: iBOT ViT-S/16, fp16, GPU memory (GB) by (B, K)
PAPER = {
    (64, 1024): 12.9,
    (64, 2048): 13.7,
    (64, 4096): 15.3,
    (64, 8192): 18.6,
    (64, 10240): 20.2,
    (100, 1024): 19.7,
    (100, 2048): 21.0,
    (100, 4096): 23.5,
    (100, 8192): 28.6,
    (100, 10240): 31.1,
}
PAPER_KS = (1024, 2048, 4096, 8192, 10240)
# (impl, K) per preset; "head" is the head-only step with impl "auto"
PRESETS = {
    "cpu": {
        "batches": (64,),
        "points": [("reference", k) for k in PAPER_KS]
        + [("auto", k) for k in (1024, 8192, 65536, 131072, 262144)]
        + [("head", 262144), ("head", 1048576)],
    },
    "cuda": {
        "batches": (64, 100),
        "points": [("reference", k) for k in PAPER_KS]
        + [("auto", k) for k in (1024, 8192, 65536, 131072, 262144, 1048576)],
    },
    "smoke": {
        "batches": (4,),
        "points": [("reference", 64), ("auto", 64), ("auto", 256), ("head", 256)],
    },
}


def parse_points(items: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        impl, sep, k = item.partition(":")
        if not sep or not k.isdigit() or impl not in ("reference", "auto", "chunked", "head"):
            raise SystemExit(
                f"--points takes IMPL:K items with IMPL reference, auto, chunked or head "
                f"(head-only), such as auto:65536 or head:1048576; got {item!r}"
            )
        out.append((impl, int(k)))
    return out


def predicted_mb(measured: list[tuple[int, float]], k: int) -> float | None:
    """The process's whole RSS (MB) that the points measured so far predict at K, or None."""
    if len(measured) < 2:
        return None
    intercept, slope = fit_line(measured)
    return intercept + slope * k


def run_child(batch: int, impl: str, k: int, args: argparse.Namespace) -> PointResult:
    """One point in a fresh interpreter (train_memory_point.py); -> its parsed result."""
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("train_memory_point.py")),
        "--batch",
        str(batch),
        "--impl",
        impl,
        "--k",
        str(k),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--repeats",
        str(args.repeats),
    ]
    if args.smoke:
        cmd.append("--smoke")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        why = f"the point's process exited {proc.returncode}: " + " | ".join(tail)
        return PointResult(status="failed", why=why)
    return PointResult(**json.loads(lines[-1]))


def record(out: Path, batch: int, impl: str, k: int, got: PointResult, args) -> None:  # type: ignore[no-untyped-def]
    """Append the point's rows: memory, step time and images/s."""
    import torch

    device = torch.device(args.device)
    op = OP + ("_head_only" if impl == "head" else "")
    name = "auto" if impl == "head" else impl
    shape = f"B={batch},K={k},{args.precision}"
    rows = [
        make_row(op, name, shape, "step_time", "s", got.step_s, device),
        make_row(op, name, shape, "images_per_s", "img/s", batch / got.step_s, device),
    ]
    if args.device == "cpu":
        rows += [
            make_row(op, name, shape, "peak_rss_growth", "MB", got.growth_mb, device),
            make_row(op, name, shape, "peak_rss", "MB", got.peak_mb, device),
            make_row(op, name, shape, "peak_anon_rss_growth", "MB", got.anon_growth_mb, device),
        ]
    else:
        rows += [make_row(op, name, shape, "peak_memory", "GB", got.peak_mb / 1e3, device)]
    append_rows(out, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run for CI")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available"
    )
    parser.add_argument(
        "--precision",
        default="fp16",
        choices=("fp16", "bf16", "fp32"),
        help="mixed precision on cuda (Table 12 used fp16); cpu runs fp32",
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="batch sizes (default: the preset's)"
    )
    parser.add_argument(
        "--points",
        nargs="+",
        default=None,
        metavar="IMPL:K",
        help="only these points, in this order (IMPL: reference, auto, head)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point (cuda)")
    parser.add_argument(
        "--out", default=None, help="CSV file (default bench/results/train_memory_<device>.csv)"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the markdown and PNG")
    args = parser.parse_args()
    import torch

    if args.smoke:
        args.device = "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cpu":
        args.precision = "fp32"
    preset = PRESETS["smoke" if args.smoke else args.device]
    points = parse_points(args.points) if args.points else preset["points"]
    out = Path(args.out or RESULTS_DIR / f"train_memory_{args.device}.csv")
    print(
        f"{'B':>4} {'K':>8} {'impl':>9} {'paper GB':>9} {'ours':>10} {'step s':>7}  "
        f"({'peak RSS growth over build_state, MB' if args.device == 'cpu' else 'peak GB'})",
        flush=True,
    )
    for batch in args.batch or preset["batches"]:
        measured: dict[str, list[tuple[int, float]]] = {}
        for impl, k in points:
            guess = predicted_mb(measured.get(impl, []), k)
            if guess is not None and guess > SAFETY * available_mb() and args.device == "cpu":
                print(
                    f"{batch:>4} {k:>8} {impl:>9} skipped: the measured points predict "
                    f"{guess / 1e3:.1f} GB, more than this machine has free",
                    flush=True,
                )
                continue
            got = run_child(batch, impl, k, args)
            paper = PAPER.get((batch, k), "")
            if got.status != "ok":
                print(f"{batch:>4} {k:>8} {impl:>9} {paper:>9} {got.status}: {got.why}", flush=True)
                continue
            record(out, batch, impl, k, got, args)
            measured.setdefault(impl, []).append((k, got.peak_mb))
            ours = got.growth_mb if args.device == "cpu" else got.peak_mb / 1e3
            print(
                f"{batch:>4} {k:>8} {impl:>9} {paper:>9} {ours:>10.1f} {got.step_s:>7.1f}",
                flush=True,
            )
    if not args.no_report and out.exists():
        md, png = write_report(out, PAPER)
        print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
