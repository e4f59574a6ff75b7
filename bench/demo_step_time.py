"""Time of one demo training step on the CPU, by torch thread count and batch size.

Builds the demo recipe's state and FFCV loader as `fastproto train` does (so FFCV is imported
first, as in a real run), then times loader wait, augmentation and `train_step` separately over
`--steps` steps after `--warmup` steps. Each (threads, batch) point runs in this process with
`torch.set_num_threads`, so the figures isolate the thread count the trainer computes with.

    python bench/demo_step_time.py                  # threads 1 and 2, the demo's batch
    python bench/demo_step_time.py --batch 128 32   # other batch sizes
    python bench/demo_step_time.py --smoke          # 3 steps, prints only
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import torch
from harness import git_commit

from fastproto.config import load_config
from fastproto.train import distributed
from fastproto.train.demo import ensure_demo_data
from fastproto.train.inputs import InputMaker, make_train_loader
from fastproto.train.loop import seed_step
from fastproto.train.setup import build_state
from fastproto.train.step import train_step
from fastproto.train.values import step_values

OUT = Path(__file__).parent / "results" / "demo_step_time_cpu.md"


def time_point(
    threads: int, batch: int, warmup: int, steps: int, overrides: tuple[str, ...] = ()
) -> tuple[float, float, float]:
    """Mean (loader wait, augmentation, train_step) seconds per step of the demo recipe with
    `overrides` (KEY=VALUE strings) on top."""
    config = load_config("demo", [f"optim.batch_size={batch}", *overrides])
    config.data.path = str(ensure_demo_data("ffcv"))
    dist = distributed.setup("cpu")
    loader = make_train_loader(config, dist)
    state, inputs = build_state(config, dist), InputMaker(config, dist)
    torch.set_num_threads(threads)
    loader.set_epoch(0)
    loader.resume_from(0)
    batches, sums = iter(loader), [0.0, 0.0, 0.0]
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch_in = next(batches)
        t1 = time.perf_counter()
        seed_step(0, i, 0)
        crops = inputs(batch_in, 0)
        t2 = time.perf_counter()
        train_step(state, *crops, step_values(config, 100 + i, len(loader)))
        t3 = time.perf_counter()
        if i >= warmup:
            for j, span in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                sums[j] += span
    return sums[0] / steps, sums[1] / steps, sums[2] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    warmup, steps = (1, 3) if args.smoke else (args.warmup, args.steps)
    rows = [
        "| batch | torch threads | loader wait ms | augment ms | train_step ms | images/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in args.batch:
        for threads in args.threads:
            load, aug, step = time_point(threads, batch, warmup, steps)
            rate = batch / (load + aug + step)
            rows.append(
                f"| {batch} | {threads} | {1e3 * load:.1f} | {1e3 * aug:.1f} | "
                f"{1e3 * step:.1f} | {rate:.0f} |"
            )
            print(rows[-1], flush=True)
    if args.smoke:
        return
    head = (
        f"# Demo step time on the CPU by thread count\n\n{dt.date.today()}, commit "
        f"{git_commit()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_interop_threads()} cores visible to torch; `python "
        f"bench/demo_step_time.py`: {warmup} warm-up and {steps} timed steps per row, "
        "the demo recipe and its FFCV loader (2 workers).\n\n"
    )
    OUT.write_text(head + "\n".join(rows) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
