"""Moving a tensor made on the host to the training device without making the host wait.

A plain `.to("cuda")` of a host tensor is a blocking copy: PyTorch synchronises the stream
after it, so the host waits for every kernel queued before it. `non_blocking=True` queues the
copy instead; from pinned memory it is a DMA the host need not wait for, while from pageable
memory the driver may still wait for the stream to stage it. So a host tensor is pinned first
(PyTorch's caching host allocator keeps the pinned block until the copy has run).
"""

from __future__ import annotations

import torch


def to_device_async(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`, the copy queued, not waited for (a no-op where `t` already is)."""
    target = torch.device(device)
    if target.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(target, non_blocking=True)
