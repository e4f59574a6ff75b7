"""Value checks (device syncs on a GPU) run on CPU tensors always, elsewhere only in debug mode.

A GPU cannot be had here, so tensors on PyTorch's `meta` device stand in for device tensors: they
have shapes and dtypes but no values, so any check that reads a value fails on them. Without
FASTPROTO_DEBUG the loss, the vMF normaliser, KoLeo-proto and the iBOT index check run on them
(no value was read: no sync); with FASTPROTO_DEBUG=1 the same calls try to read values.
"""

from __future__ import annotations

import pytest
import torch
from fastproto.kernels.validate import check_loss_inputs

from fastproto.losses import koleo_proto
from fastproto.losses.ibot import _check_patches
from fastproto.vmf import log_normalizer


def _calls(device: str) -> list:
    def t(*shape: int) -> torch.Tensor:
        return torch.ones(*shape, device=device)

    targets = torch.full((6, 2), 99, dtype=torch.long, device=device)  # out of range
    return [
        lambda: log_normalizer(-t(5), 256),  # kappa <= 0
        lambda: check_loss_inputs(
            t(6, 8), t(3, 8), t(5, 8), t(5, 8), targets, t(6, 2), t(5), 0.1, 0.04
        ),
        lambda: koleo_proto(t(8, 4) * float("nan"), group_size=4),
        lambda: _check_patches(t(3, 8), t(3, 8), targets[:3, 0], 2),
    ]


@pytest.mark.parametrize("index", range(4))
def test_device_tensors_are_not_read_without_debug(monkeypatch, index: int) -> None:
    from fastproto.value_checks import check_values

    monkeypatch.delenv("FASTPROTO_DEBUG", raising=False)
    assert not check_values(torch.ones(2, device="meta"))
    result = _calls("meta")[index]()  # reading a value of a meta tensor would raise here
    outputs = result if isinstance(result, tuple) else (result,)
    for out in outputs:  # whatever comes back stayed on the device: nothing went to the host
        assert out is None or not isinstance(out, torch.Tensor) or out.device.type == "meta"


@pytest.mark.parametrize("index", range(4))
def test_debug_mode_reads_device_tensors(monkeypatch, index: int) -> None:
    monkeypatch.setenv("FASTPROTO_DEBUG", "1")
    with pytest.raises((RuntimeError, NotImplementedError)):  # meta tensors have no values
        _calls("meta")[index]()


@pytest.mark.parametrize("index", range(4))
def test_cpu_tensors_are_always_checked(monkeypatch, index: int) -> None:
    monkeypatch.delenv("FASTPROTO_DEBUG", raising=False)
    with pytest.raises(ValueError):
        _calls("cpu")[index]()
