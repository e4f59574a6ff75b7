"""Watching a piece of code for what would make the host wait for a GPU, on the CPU.

On a GPU the host waits for the device whenever it needs a value (`item()`, `float(t)`,
`bool(t)`, a copy to the host) or a shape that depends on values (`nonzero`, a boolean index,
`unique`, ...). Without a GPU no wait can be timed, but the operators can be seen:

- `SyncWatch`, a TorchDispatchMode, sees every aten operator the code runs and keeps those that
  synchronise on CUDA (SYNCING, and `index`/`index_put` with a boolean index), including
  tensors made from Python data, which a GPU copies from the host with a blocking copy;
- on CPU tensors `tolist()`, `cpu()` and `numpy()` run no operator, so the watch also counts
  their Python calls, the copies to the host a GPU would make.

Not seen: a tensor made on the host by an operator (e.g. `torch.randperm(..., device="cpu")`)
and then moved to the device, which on the CPU is no move at all; the GPU tier's twin counts
those with CUDA's sync detector (fastproto.device_copy moves them without a wait).

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
    # a tensor made from Python data (torch.tensor, new_tensor, as_tensor): on a GPU it is made
    # on the host and copied to the device with a blocking copy
    aten.lift_fresh.default,
}
BOOL_INDEXED = {
    aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
    aten._index_put_impl_.default,
}  # fmt: skip
HOST_COPIES = ("tolist", "cpu", "numpy")


def _where() -> str:
    """The innermost project frames of the current stack, for the failure message."""
    frames = [f for f in traceback.extract_stack() if "/fastproto/" in f.filename]
    return " <- ".join(
        f"{f.filename.rsplit('/fastproto/', 1)[1]}:{f.lineno}" for f in frames[::-1][:3]
    )


def _in_optimizer() -> bool:
    return any("/torch/optim/" in f.filename for f in traceback.extract_stack())


def _bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


@dataclass
class Seen:
    syncs: list[str] = field(default_factory=list)  # "op at fastproto/...:line"
    host_copies: list[str] = field(default_factory=list)


class SyncWatch(TorchDispatchMode):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        syncing = func in SYNCING or (func in BOOL_INDEXED and _bool_index(args))
        if syncing and not _in_optimizer():
            self.seen.syncs.append(f"{func} at {_where()}")
        return func(*args, **(kwargs or {}))


@contextmanager
def watching(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    """Record what the code inside would make a GPU's host wait for."""
    seen = Seen()
    with monkeypatch.context() as patch:
        for name in HOST_COPIES:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _name=name, _original=original, **kwargs):  # type: ignore[no-untyped-def]
                seen.host_copies.append(f"{_name}() at {_where()}")
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        with SyncWatch(seen):
            yield seen
