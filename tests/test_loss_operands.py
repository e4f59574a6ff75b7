"""The dtype head outputs enter the prototype loss in (fastproto.train.step.loss_operand_dtype).

Under autocast on a GPU the fused Triton kernels take the head outputs in bf16/fp16, so their
dots run on tensor cores with float32 accumulation; every other path, and fp32 runs, get float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from fastproto.train.step import loss_operand_dtype


def _state(impl: str, device: str, amp: torch.dtype | None) -> SimpleNamespace:
    config = SimpleNamespace(method=SimpleNamespace(loss_impl=impl))
    return SimpleNamespace(config=config, device=torch.device(device), amp_dtype=amp)


@pytest.mark.parametrize(
    ("impl", "device", "amp", "want"),
    [
        ("auto", "cuda", torch.bfloat16, torch.bfloat16),  # auto is triton on CUDA
        ("triton", "cuda", torch.float16, torch.float16),
        ("auto", "cuda", None, torch.float32),  # run.precision = fp32
        ("chunked", "cuda", torch.bfloat16, torch.float32),  # materialises logit blocks
        ("reference", "cuda", torch.bfloat16, torch.float32),
        ("auto", "cpu", torch.bfloat16, torch.float32),  # auto is chunked on CPU
    ],
)
def test_loss_operand_dtype(
    impl: str, device: str, amp: torch.dtype | None, want: torch.dtype
) -> None:
    assert loss_operand_dtype(_state(impl, device, amp)) == want  # type: ignore[arg-type]


@dataclass
class StepSeen:
    loss_dtypes: list[torch.dtype]  # the student embeddings' dtype at each prototype loss call
    terms: dict[str, float]
    prototypes_moved: bool


def _bf16_step(
    method: str, device: torch.device, overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> StepSeen:
    """One bf16 training step of the demo recipe, watching what the fused loss is handed."""
    from fastproto.config import load_config
    from fastproto.losses import dino, ibot
    from fastproto.train.distributed import DistInfo
    from fastproto.train.inputs import InputMaker
    from fastproto.train.setup import build_state
    from fastproto.train.step import train_step
    from fastproto.train.values import step_values

    config = load_config(
        "demo",
        [
            f"method.name='{method}'",
            "run.precision='bf16'",
            f"run.device='{device.type}'",
            *overrides,
        ],
    )
    dist = DistInfo(0, 1, 0, device)
    state = build_state(config, dist)
    seen: list[torch.dtype] = []

    def spying(original):  # type: ignore[no-untyped-def]
        def spy(student: torch.Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(student.dtype)
            return original(student, *args, **kwargs)

        return spy

    # each loss imports its dispatcher function by name: DINO the pair table, iBOT aligned rows
    names = ((dino, "prototype_cross_entropy"), (ibot, "aligned_cross_entropy"))
    for module, name in names:
        monkeypatch.setattr(module, name, spying(getattr(module, name)))
    b, d = 8, config.data
    crops = torch.rand(d.global_crops * b, 3, d.global_size, d.global_size, device=device)
    local = torch.rand(d.local_crops * b, 3, d.local_size, d.local_size, device=device)
    masks = InputMaker(config, dist).masks(crops.shape[0]) if method == "ibot" else None
    before = state.student.cls_head.prototypes().detach().clone()
    terms, _ = train_step(state, crops, local, masks, step_values(config, 10, 100))
    moved = not torch.equal(state.student.cls_head.prototypes().detach(), before)
    return StepSeen(seen, terms, moved)


@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_bf16_step_feeds_the_interpreted_kernels_bf16(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the CPU tier runs Triton interpreted (TRITON_INTERPRET=1, set by conftest)
    overrides = ["method.loss_impl='triton'", "head.num_prototypes=64"]
    got = _bf16_step(method, torch.device("cpu"), overrides, monkeypatch)
    assert got.loss_dtypes == [torch.bfloat16] * (2 if method == "ibot" else 1), got.loss_dtypes
    assert all(math.isfinite(v) for v in got.terms.values()), got.terms
    assert got.prototypes_moved


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_gpu_bf16_step_feeds_the_kernels_bf16(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got = _bf16_step(method, torch.device("cuda"), ["head.num_prototypes=4096"], monkeypatch)
    assert got.loss_dtypes == [torch.bfloat16] * (2 if method == "ibot" else 1), got.loss_dtypes
    assert all(math.isfinite(v) for v in got.terms.values()), got.terms
    assert got.prototypes_moved
