"""Cost of EM prototypes beside gradient prototypes: train_step time and prototype state.

For each K, the demo recipe's step (`bench/demo_step_time.py`'s timing: its FFCV loader, one
torch thread, KoLeo-proto 0 in both arms) with head.prototypes = "gradient" and "em" (fixed
concentration, the default). The state each arm keeps for the CLS prototype matrix W [K, D]
beyond W itself: gradient, its gradient and AdamW's two moments (3 K D float32); EM, the
mixture's buffers (mass [K], resultant [K, D], direction [K, D], kappa [K]), read from the
built state, so the figures are the trainer's own.

    python bench/prototype_em_cost.py               # K = 1024, 4096, 16384
    python bench/prototype_em_cost.py --smoke       # K = 64, 3 steps, prints only
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_step_time import time_point  # noqa: E402
from harness import git_commit  # noqa: E402

from fastproto.config import load_config  # noqa: E402
from fastproto.train.setup import build_prototype_em, build_student  # noqa: E402

OUT = Path(__file__).parent / "results" / "prototype_em_cost_cpu.md"
MODES = ("gradient", "em")


def state_bytes(k: int, mode: str) -> int:
    """Bytes kept for the CLS prototype matrix beyond W [K, D] itself, by `mode`."""
    config = load_config(
        "demo", [f"head.num_prototypes={k}", f"head.prototypes='{mode}'", "method.koleo_proto=0"]
    )
    student = build_student(config)
    em = build_prototype_em(config, student, torch.device("cpu"))
    if em is not None:
        return sum(b.numel() * b.element_size() for b in em.buffers())
    return 3 * k * config.head.bottleneck_dim * 4  # grad, exp_avg, exp_avg_sq in float32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    ks, warmup, steps = ([64], 1, 3) if args.smoke else (args.K, 10, 40)
    rows = [
        "| K | prototypes | train_step ms | state beyond W, MB | MB per 1024 prototypes |",
        "|---:|---|---:|---:|---:|",
    ]
    for k in ks:
        for mode in MODES:
            overrides = (
                f"head.num_prototypes={k}",
                f"head.prototypes='{mode}'",
                "method.koleo_proto=0",
            )
            step = time_point(1, 32, warmup, steps, overrides)[2]
            mb = state_bytes(k, mode) / 2**20
            rows.append(f"| {k} | {mode} | {1e3 * step:.1f} | {mb:.2f} | {mb * 1024 / k:.2f} |")
            print(rows[-1], flush=True)
    if args.smoke:
        return
    head = (
        f"# EM prototypes beside gradient prototypes: step time and state\n\n{dt.date.today()}, "
        f"commit {git_commit()}, {platform.processor() or platform.machine()}; `python "
        f"bench/prototype_em_cost.py`: the demo recipe (D = 64, batch 32), one torch thread, "
        f"KoLeo-proto 0, {warmup} warm-up and {steps} timed steps per row.\n\n"
    )
    OUT.write_text(head + "\n".join(rows) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
