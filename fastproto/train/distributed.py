"""One process or many: torchrun's environment, the process group, and rank-0 helpers.

`torchrun --nproc_per_node N -m fastproto train ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
without them the run is a single process and no process group is created. NCCL is used on
GPUs, gloo on CPU. Multi-node runs go through torchrun's rendezvous (MASTER_ADDR/PORT).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastproto.device_copy import to_device_async


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` is this process's GPU when CUDA is available, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device=cuda but no CUDA GPU is visible; use run.device=cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup(requested_device: str) -> DistInfo:
    """Join the process group if torchrun started us; returns this process's place in it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# every loss term a step may report, in one fixed order so each rank packs the same vector
TERM_KEYS = ("loss", "dino", "ibot", "koleo_proto", "koleo_data", "me_max", "grad_norm")


def mean_terms(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each logged term averaged over the ranks that have it, in one all-reduce of [2, T]
    (values and presence: a rank without masked tokens has no "ibot" term this step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return terms
    keys = TERM_KEYS + tuple(sorted(k for k in terms if k not in TERM_KEYS))  # same on all ranks
    host = torch.tensor(
        [[terms.get(k, 0.0) for k in keys], [float(k in terms) for k in keys]], dtype=torch.float64
    )
    packed = to_device_async(host, device)  # queued: the read after the all-reduce is the wait
    dist.all_reduce(packed)
    values, counts = packed.tolist()
    return {k: v / c for k, v, c in zip(keys, values, counts, strict=True) if c > 0}


STOP_KEY = "_stop_requested"  # rides in mean_terms' all-reduce; never logged


def terms_and_stop(
    terms: dict[str, float], stop_requested: bool, device: torch.device
) -> tuple[dict[str, float], bool]:
    """The logged terms averaged over ranks, and whether any rank was asked to stop (a signal
    reaches one rank, and all must stop at the same step), in one all-reduce and one read."""
    merged = mean_terms(terms | {STOP_KEY: float(stop_requested)}, device)
    stop = merged.pop(STOP_KEY) > 0  # every rank has the key: the mean is > 0 iff one was 1
    return merged, stop
