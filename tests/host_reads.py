"""Watching a piece of code for what would make the host wait for a GPU, on the CPU.

On a GPU the host waits for the device whenever it needs a value (`item()`, `float(t)`,
`bool(t)`, a copy to the host) or a shape that depends on values (`nonzero`, a boolean index,
`unique`, ...). Without a GPU no wait can be timed, but the operators can be seen:

- `SyncWatch`, a TorchDispatchMode, sees every aten operator the code runs and keeps those that
  synchronise on CUDA (SYNCING, and `index`/`index_put` with a boolean index), including
  tensors made from Python data, which a GPU copies from the host with a blocking copy;
- copies from the host to another device that are not non_blocking. On the CPU nothing
  moves, so those are seen only where the code runs on the `meta` device, which stands in for
  a GPU: its tensors have shapes and no values, so any read of a device value raises there
  (tests/test_step_host_syncs.py runs a step's inputs and step so). The GPU tier's twin counts
  all of these with CUDA's own sync detector;
- on CPU tensors `tolist()`, `cpu()` and `numpy()` run no operator, so the watch also counts
  their Python calls, the copies to the host a GPU would make.

AdamW reads its step counters with `item()`; torch keeps those on the host unless the
optimizer is capturable or fused, so the reads in torch/optim wait for nothing and are left out.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNCING = {
    aten._local_scalar_dense.default,  # item(), float(t), int(t), bool(t)
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.bincount.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
# a tensor made from Python data (torch.tensor, new_tensor, as_tensor): on a GPU it is made on
# the host and copied to the device with a blocking copy
FROM_PYTHON_DATA = aten.lift_fresh.default
COPIES = {aten._to_copy.default, aten.copy_.default}
BOOL_INDEXED = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
HOST_COPIES = ("tolist", "cpu", "numpy")


def _where() -> str:
    """The innermost project frames of the current stack, for the failure message."""
    frames = [f for f in traceback.extract_stack() if "/fastproto/" in f.filename]
    return " <- ".join(
        f"{f.filename.rsplit('/fastproto/', 1)[1]}:{f.lineno}" for f in frames[::-1][:3]
    )


def _in_optimizer() -> bool:
    return any("/torch/optim/" in f.filename for f in traceback.extract_stack())


def _blocking_host_copy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A copy from a host tensor to another device that the host waits for."""
    if func is aten._to_copy.default:
        source, target = args[0], kwargs.get("device")
    else:  # copy_(destination, source, non_blocking)
        source, target = args[1], args[0].device
        kwargs = {"non_blocking": args[2] if len(args) > 2 else kwargs.get("non_blocking")}
    to_device = target is not None and torch.device(target).type != "cpu"
    return source.device.type == "cpu" and to_device and not kwargs.get("non_blocking")


def _bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


@dataclass
class Seen:
    syncs: list[str] = field(default_factory=list)  # "op at fastproto/...:line"
    host_copies: list[str] = field(default_factory=list)


def _touches(args: tuple[Any, ...], device: str) -> bool:
    return any(isinstance(a, torch.Tensor) and a.device.type == device for a in args) or any(
        isinstance(a, torch.Tensor) and a.device.type == device
        for group in args
        if isinstance(group, (list, tuple))
        for a in group
    )


class SyncWatch(TorchDispatchMode):
    """`device`: where the watched code keeps its tensors. "cpu" (everything there): every
    operator of SYNCING counts, and so do tensors made from Python data. "meta" (the stand-in
    for a GPU): only operators on meta tensors count, and the host may make tensors of its own
    (an input path draws masks there on purpose)."""

    def __init__(self, seen: Seen, device: str = "cpu") -> None:
        super().__init__()
        self.seen, self.device = seen, device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        reads = func in SYNCING or (func in BOOL_INDEXED and _bool_index(args))
        syncing = (
            (reads and _touches(args, self.device))
            or (func is FROM_PYTHON_DATA and self.device == "cpu")
            or (func in COPIES and _blocking_host_copy(func, args, kwargs))
        )
        if syncing and not _in_optimizer():
            self.seen.syncs.append(f"{func} at {_where()}")
        return func(*args, **kwargs)


@contextmanager
def watching(monkeypatch: pytest.MonkeyPatch, device: str = "cpu") -> Iterator[Seen]:
    """Record what the code inside would make a GPU's host wait for."""
    seen = Seen()
    with monkeypatch.context() as patch:
        for name in HOST_COPIES:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _name=name, _original=original, **kwargs):  # type: ignore[no-untyped-def]
                seen.host_copies.append(f"{_name}() at {_where()}")
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        with SyncWatch(seen, device):
            yield seen
