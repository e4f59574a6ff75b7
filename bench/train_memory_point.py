"""One point of bench/train_memory.py in a process of its own: build, step, print one JSON line.

    python bench/train_memory_point.py --batch 64 --impl auto --k 65536 --device cpu

--impl head is the head-only step: impl "auto" on a ViT whose transformer blocks are removed
(patch embedding, head, losses, KoLeo-proto, optimizer, EMA, with the recipe's row counts).
On CPU the figure is the peak RSS growth of the step over the RSS after `build_state`; the
AdamW moments are allocated first (an lr = 0 step on zero gradients: no weight changes), so one
step is a steady-state step. On CUDA: peak allocated memory over timed steps after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SAFETY = 0.9  # of the memory free at the start that the point may grow into
BLOCKLESS = {"vit_small_patch16_224": (384, 0, 6, 16, 224), "vit_pico_patch4_28": (64, 0, 2, 4, 28)}


@dataclass(frozen=True)
class PointResult:
    """What one point measured (MB = 10^6 bytes); status "ok", "skipped" or "failed"."""

    status: str
    why: str = ""
    step_s: float = math.nan
    peak_mb: float = math.nan  # CPU: peak RSS of the process; CUDA: peak allocated
    growth_mb: float = math.nan  # peak over the state right after build_state
    base_mb: float = math.nan
    anon_growth_mb: float = math.nan  # CPU: sampled peak of the anonymous RSS over its base


def _proc_kb_mb(path: str, key: str) -> float:
    """The "key: N kB" line of a /proc file, in MB."""
    with open(path) as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"{path} has no {key} line")


def available_mb() -> float:
    """MemAvailable of this machine, MB."""
    return _proc_kb_mb("/proc/meminfo", "MemAvailable")


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def anon_rss_mb() -> float:
    """Anonymous resident memory (heap and tensors, not the mapped libraries), MB."""
    return _proc_kb_mb("/proc/self/status", "RssAnon")


class MemoryWatch:
    """A thread that samples this process's RSS every 2 ms: keeps the peak of its anonymous
    part, and stops the process with a "skipped" line before the RSS passes `limit_mb`.

    The total RSS also counts pages of the mapped libraries (torch's alone is about 1 GB),
    which the kernel drops under memory pressure and faults back in during the step; the
    anonymous part is what the step allocates."""

    def __init__(self, limit_mb: float) -> None:
        self.limit_mb = limit_mb
        self.peak_anon_mb = anon_rss_mb()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            self.peak_anon_mb = max(self.peak_anon_mb, anon_rss_mb())
            if rss_mb() > self.limit_mb:
                why = f"its RSS passed {self.limit_mb / 1e3:.1f} GB, 90 % of what was free; stopped"
                print(json.dumps(asdict(PointResult("skipped", why))), flush=True)
                os._exit(0)
            time.sleep(0.002)


def make_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fastproto import models
    from fastproto.config import load_config

    arch = "vit_pico_patch4_28" if args.smoke else "vit_small_patch16_224"
    if args.impl == "head":
        models.ARCHS[arch + "_blockless"] = BLOCKLESS[arch]
        arch += "_blockless"
    impl = "auto" if args.impl == "head" else args.impl
    items = [
        f"head.num_prototypes={args.k}",
        f"optim.batch_size={args.batch}",
        f"method.loss_impl={impl!r}",
        f"run.precision={args.precision!r}",
        f"model.arch={arch!r}",
        f"run.device={args.device!r}",
    ]
    if args.smoke:
        items += [
            "data.global_size=28",
            "data.local_size=12",
            "head.hidden_dim=64",
            "head.bottleneck_dim=32",
        ]
    return load_config(None, items)


def make_inputs(config, device):  # type: ignore[no-untyped-def]
    import torch

    from fastproto.data.masking import block_masks
    from fastproto.masked_tokens import MaskedTokens
    from fastproto.models import ARCHS

    d, b = config.data, config.optim.batch_size
    grid = d.global_size // ARCHS[config.model.arch][3]
    g = torch.randn(d.global_crops * b, 3, d.global_size, d.global_size, device=device)
    loc = torch.randn(d.local_crops * b, 3, d.local_size, d.local_size, device=device)
    masks = MaskedTokens.from_grid(block_masks(d.global_crops * b, (grid, grid), 0.3, 0.2))
    masks = masks.to(device)
    return g, loc, masks


def prime_optimizer(state) -> None:  # type: ignore[no-untyped-def]
    """Create AdamW's moments as the first step would, without changing any weight."""
    import torch

    params = [p for p in state.student.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    for group in state.optimizer.param_groups:
        group["lr"], group["weight_decay"] = 0.0, 0.0
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)


def measure(args: argparse.Namespace) -> PointResult:
    import torch

    from fastproto.train.distributed import DistInfo
    from fastproto.train.setup import build_state
    from fastproto.train.step import StepValues, train_step

    values = StepValues(
        lr=1e-4,
        weight_decay=0.04,
        prototype_weight_decay=0.04,
        prototype_decay_clock=4e-6,
        teacher_temp=0.04,
        momentum=0.996,
        freeze_last_layer=False,
    )
    device = torch.device(args.device)
    config = make_config(args)
    torch.manual_seed(0)
    state = build_state(config, DistInfo(0, 1, 0, device))
    torch.manual_seed(1)  # the same crops and masks (so the same masked rows) at every K
    g, loc, masks = make_inputs(config, device)
    if device.type == "cpu":
        base, base_anon = rss_mb(), anon_rss_mb()
        watch = MemoryWatch(base + SAFETY * available_mb())
        prime_optimizer(state)
        start = time.perf_counter()
        train_step(state, g, loc, masks, values)
        step_s = time.perf_counter() - start
        peak = peak_rss_mb()
        anon = max(watch.peak_anon_mb, anon_rss_mb()) - base_anon
        return PointResult(
            "ok",
            step_s=step_s,
            peak_mb=peak,
            growth_mb=peak - base,
            base_mb=base,
            anon_growth_mb=anon,
        )
    from harness import time_and_peak

    base = torch.cuda.memory_allocated(device) / 1e6
    # as on the CPU: AdamW's moments exist even if the fp16 grad scaler skips every measured
    # step (it starts at a scale that overflows), so the peak always holds them
    prime_optimizer(state)
    try:
        timing, memory = time_and_peak(
            lambda: train_step(state, g, loc, masks, values),
            device,
            warmup=1,
            repeats=args.repeats,
            flush_l2=False,
        )
    except torch.OutOfMemoryError:
        return PointResult("skipped", why="out of GPU memory")
    assert memory is not None
    peak = memory.peak / 1e6
    return PointResult("ok", step_s=timing.p50, peak_mb=peak, growth_mb=peak - base, base_mb=base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--impl", required=True, choices=("reference", "auto", "chunked", "head"))
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asdict(measure(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
