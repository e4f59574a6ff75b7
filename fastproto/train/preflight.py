"""Checks a run passes before anything is allocated: does the prototype head fit in memory?

The prototypes W [K, D] live five times over during training (student, teacher, gradient and
AdamW's two moments), in float32, before activations, the backbone or the loss's blocks. A K
whose five copies alone exceed the device's memory would fail in the allocator after seconds of
set-up (or swap the machine to a halt), so it is refused at once with the numbers.
"""

from __future__ import annotations

import os

import torch

from fastproto.config import TrainConfig

COPIES = 5  # student, teacher, gradient, AdamW exp_avg and exp_avg_sq


def device_memory(device: torch.device) -> int:
    """Bytes of memory of `device` (physical RAM for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def prototype_bytes(config: TrainConfig) -> int:
    """Bytes of the prototype weights over all copies (both heads when not shared)."""
    heads = 1 if config.head.shared or config.method.name == "dino" else 2
    return heads * COPIES * config.head.num_prototypes * config.head.bottleneck_dim * 4


def check_memory(config: TrainConfig, device: torch.device) -> None:
    """Refuse a head whose prototypes alone cannot fit on `device`."""
    need, have = prototype_bytes(config), device_memory(device)
    if need > have:
        raise ValueError(
            f"head.num_prototypes={config.head.num_prototypes} (x head.bottleneck_dim="
            f"{config.head.bottleneck_dim}) needs {need / 2**30:.1f} GiB for the prototypes alone "
            f"(student, teacher, gradient, two AdamW moments), more than the {have / 2**30:.1f} "
            f"GiB of {device.type}; lower --K or head.bottleneck_dim"
        )
