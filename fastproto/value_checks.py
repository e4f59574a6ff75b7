"""When to check tensor *values*: always on the CPU, on a GPU only with FASTPROTO_DEBUG=1.

Shape, dtype and device checks read metadata and always run. Checks of values (kappa > 0,
targets within [-1, Nt - 1], no NaN among the prototypes) need the answer on the host: on a GPU
each is a device synchronisation that stalls the queue of kernels, several per training step.
There they run only when the environment variable FASTPROTO_DEBUG is 1 (read at each call, so
it can be set for one run: `FASTPROTO_DEBUG=1 fastproto train ...`). On CPU tensors they cost
one pass over the data and always run.
"""

from __future__ import annotations

import os

import torch


def debug() -> bool:
    """FASTPROTO_DEBUG=1: check values on every device."""
    return os.environ.get("FASTPROTO_DEBUG") == "1"


def check_values(*tensors: torch.Tensor) -> bool:
    """Whether to check the values of `tensors`: all on the CPU, or debug mode."""
    return debug() or all(t.device.type == "cpu" for t in tensors)
