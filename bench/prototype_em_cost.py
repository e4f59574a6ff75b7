"""Cost of EM prototypes beside gradient prototypes: train_step time and prototype state.

For each K, the demo recipe's step (`bench/demo_step_time.py`'s timing: its FFCV loader, one
torch thread, KoLeo-proto 0 in both arms) with head.prototypes = "gradient" and "em" (fixed
concentration, the default). The state each arm keeps for the CLS prototype matrix W [K, D]
beyond W itself: gradient, its gradient and AdamW's two moments (3 K D float32); EM, the
mixture's buffers (mass [K], resultant [K, D], direction [K, D], kappa [K]), read from the
built state, so the figures are the trainer's own.

A second table times the E-step where it is made: the demo's CLS loss (forward and backward,
probability centring's raw means on, chunked) alone, with the E-step statistics formed in the
loss's own passes (`estep="uncentred"`, what the trainer does), and with them from a separate
teacher-only sweep (`teacher_responsibilities`), the rows interleaved.

    python bench/prototype_em_cost.py               # K = 1024, 4096, 16384
    python bench/prototype_em_cost.py --smoke       # K = 64, 3 steps, prints only
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_step_time import time_point  # noqa: E402
from fastproto.kernels import teacher_responsibilities  # noqa: E402
from harness import git_commit  # noqa: E402

from fastproto.config import load_config  # noqa: E402
from fastproto.losses import dino_loss  # noqa: E402
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


ESTEP_WAYS = ("loss alone", "E-step in the loss's passes", "loss + separate E-step sweep")


def _cls_loss_inputs(k: int, batch: int = 32) -> tuple[torch.Tensor, ...]:
    """The demo's CLS loss operands: student [(G+L)*B, D], teacher [G*B, D], W [K, D], centre."""
    config = load_config("demo", [f"head.num_prototypes={k}"])
    g, loc, d = config.data.global_crops, config.data.local_crops, config.head.bottleneck_dim
    gen = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize
    student = unit(torch.randn((g + loc) * batch, d, generator=gen), dim=1)
    teacher = unit(torch.randn(g * batch, d, generator=gen), dim=1)
    protos = unit(torch.randn(k, d, generator=gen), dim=1)
    centre = 0.1 * torch.randn(k, generator=gen)
    return student, teacher, protos, centre


def _time_estep(k: int, repeats: int) -> list[float]:
    """Median ms of one CLS loss forward + backward per ESTEP_WAYS entry, interleaved."""
    student, teacher, protos, centre = _cls_loss_inputs(k)
    times: list[list[float]] = [[] for _ in ESTEP_WAYS]
    for _ in range(repeats):
        for way in range(len(ESTEP_WAYS)):
            w = protos.clone().requires_grad_()
            t0 = time.perf_counter()
            estep = "uncentred" if way == 1 else None
            args = (student, teacher, w, w.detach(), centre, 2, 0.1, 0.04, True, "chunked")
            result = dino_loss(*args, raw_means=True, estep=estep)
            result.loss.backward()
            if way == 2:
                zero = torch.zeros_like(centre)
                teacher_responsibilities(teacher, w.detach(), zero, 0.04, True, "chunked")
            times[way].append(time.perf_counter() - t0)
    return [1e3 * sorted(t)[len(t) // 2] for t in times]


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
    rows += [
        "",
        "The E-step where it is made: one CLS loss of the demo's shapes (student 4 x 32 rows, "
        "teacher 2 x 32, D = 64), forward and backward, chunked, probability centring's raw "
        "means on; median of 30 repeats, the three ways interleaved.",
        "",
        "| K | " + " | ".join(f"{w}, ms" for w in ESTEP_WAYS) + " |",
        "|---:|" + "---:|" * len(ESTEP_WAYS),
    ]
    for k in ks:
        ms = _time_estep(k, 3 if args.smoke else 30)
        rows.append(f"| {k} | " + " | ".join(f"{t:.2f}" for t in ms) + " |")
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
