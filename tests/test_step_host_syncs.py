"""A training step makes the host wait for the device once, and still refuses a bad step.

On a GPU every read of a device value stalls the host until the queue of kernels drains. A step
reads its numbers once (fastproto.train.step.read_on_host: loss terms, health numbers, grad norm
and teacher entropy in one copy, after the clipping and before the update), and nothing else:
the iBOT masked tokens are found on the host where the masks are drawn
(fastproto.masked_tokens), the clipping's norms stay on the device, and the value checks of
fastproto.value_checks are switched to their GPU decision here (debug mode only). The watch of
tests/host_reads.py sees the operators that would wait on a GPU, on the CPU and on the meta
device, which stands in for a GPU (host tensors stay on the host, device tensors have no
values, copies between them show their non_blocking flag); the GPU tier repeats the check with
CUDA's own sync detector.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from host_reads import watching

from fastproto import value_checks
from fastproto.config import TrainConfig, load_config
from fastproto.data.batch import Batch
from fastproto.errors import NonFiniteError
from fastproto.masked_tokens import MaskedTokens
from fastproto.train.distributed import DistInfo
from fastproto.train.inputs import InputMaker
from fastproto.train.setup import build_state
from fastproto.train.step import TrainState, train_step
from fastproto.train.values import step_values

B = 4


def _gpu_value_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """What check_values decides for device tensors outside debug mode: no value is read."""
    # the modules that import check_values
    import fastproto.kernels.validate  # noqa: F401

    import fastproto.losses.ibot  # noqa: F401
    import fastproto.losses.koleo  # noqa: F401
    import fastproto.vmf  # noqa: F401

    original = value_checks.check_values
    users = [
        m
        for m in list(sys.modules.values())
        if m is not value_checks and getattr(m, "check_values", None) is original
    ]
    for module in users:
        monkeypatch.setattr(module, "check_values", lambda *tensors: False)
    assert len(users) >= 4


def _config(*overrides: str) -> TrainConfig:
    return load_config(
        "demo",
        [
            "model.arch=vit_pico_patch4_28",
            "data.local_size=12",
            "head.num_prototypes=64",
            "head.hidden_dim=32",
            "head.bottleneck_dim=16",
            f"optim.batch_size={B}",
            *overrides,
        ],
    )


def _uint8_batch(config: TrainConfig, device: torch.device) -> Batch:
    """A loader's batch of B images, on `device` as the loaders hand it over."""
    d = config.data
    return Batch(
        torch.randint(0, 256, (d.global_crops, B, 3, 28, 28), dtype=torch.uint8),
        torch.randint(0, 256, (d.local_crops, B, 3, 12, 12), dtype=torch.uint8),
        torch.zeros(B, dtype=torch.long),
        torch.arange(B),
    ).to(device)


def _setup(device: torch.device, *overrides: str) -> tuple[TrainState, tuple, object]:  # type: ignore[type-arg]
    config = _config(f"run.device='{device.type}'", *overrides)
    dist = DistInfo(0, 1, 0, device)
    torch.manual_seed(0)
    state = build_state(config, dist)
    d = config.data
    g = torch.rand(d.global_crops * B, 3, 28, 28, device=device)
    loc = torch.rand(d.local_crops * B, 3, 12, 12, device=device)
    masks = InputMaker(config, dist).masks(g.shape[0]) if config.method.name == "ibot" else None
    return state, (g, loc, masks), config


CASES = [
    ("ibot", "probability", "chunked"),
    ("ibot", "sinkhorn", "chunked"),
    ("ibot", "logit", "chunked"),
    ("dino", "probability", "chunked"),
    ("ibot", "probability", "triton"),  # interpreted
]


@pytest.mark.parametrize(("method", "centering", "impl"), CASES)
def test_a_training_step_reads_the_device_once(
    method: str, centering: str, impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu_value_checks(monkeypatch)
    state, inputs, config = _setup(
        torch.device("cpu"),
        f"method.name='{method}'",
        f"method.centering='{centering}'",
        f"method.loss_impl='{impl}'",
        "head.shared=false",
    )
    train_step(state, *inputs, step_values(config, 10, 100))  # optimizer state made
    with watching(monkeypatch) as seen:
        terms, _ = train_step(state, *inputs, step_values(config, 11, 100))
    assert seen.syncs == [], "operators that wait for the device in a step:\n" + "\n".join(
        seen.syncs
    )
    assert len(seen.host_copies) == 1, seen.host_copies  # read_on_host's one copy
    assert state.step == 2 and {"loss", "grad_norm", "teacher_entropy"} <= set(terms)
    if method == "ibot":
        assert terms["ibot"] > 0  # the patch loss ran on gathered tokens


def test_on_a_device_the_inputs_and_the_step_wait_for_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The meta device stands in for a GPU (tests/host_reads.py): from the uint8 batch on the
    device through augmentation, masks, forward, losses, backward and clipping no device value
    is read (a read raises on meta) and nothing is copied from the host with a blocking copy.
    The step's one read (read_on_host, after the clipping) is left out: it is the wait."""
    from fastproto.train.step import backward_and_clip, compute_losses

    meta = torch.device("meta")
    config = _config("method.name='ibot'", "method.loss_impl='chunked'", "run.precision='fp32'")
    dist = DistInfo(0, 1, 0, meta)  # fp32: autocast has no meta device
    state, maker = build_state(config, dist), InputMaker(config, dist)
    batch = _uint8_batch(config, meta)
    with watching(monkeypatch, device="meta") as seen:
        g, loc, masks = maker(batch, 0)
        total = compute_losses(state, g, loc, masks, teacher_temp=0.04).total
        norm = backward_and_clip(state, total, step_values(config, 10, 100))
    assert seen.syncs == [], "waits for the device:\n" + "\n".join(seen.syncs)
    assert norm.device == meta and masks.token_index.device == meta


def test_a_non_finite_loss_is_refused_before_any_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the value checks do not stop a NaN input; the one read after the clipping does."""
    _gpu_value_checks(monkeypatch)
    state, (g, loc, masks), config = _setup(
        torch.device("cpu"), "method.name='ibot'", "method.loss_impl='chunked'"
    )
    student = {k: v.clone() for k, v in state.student.state_dict().items()}
    teacher = {k: v.clone() for k, v in state.teacher.state_dict().items()}
    g = g.clone()
    g[0] = float("nan")
    with pytest.raises(NonFiniteError, match="the loss is nan at step 0"):
        train_step(state, g, loc, masks, step_values(config, 10, 100))
    assert state.step == 0
    assert all(p.grad is None for p in state.student.parameters())
    for k, v in state.student.state_dict().items():
        assert torch.equal(v, student[k]), k
    for k, v in state.teacher.state_dict().items():
        assert torch.equal(v, teacher[k]), k


@pytest.mark.gpu
def test_gpu_training_step_synchronises_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's sync debug mode warns at every synchronising call; a step's inputs (the uint8
    batch to the device, the augmentation, the masks) and the step itself may make one
    (read_on_host)."""

    monkeypatch.delenv("FASTPROTO_DEBUG", raising=False)
    device = torch.device("cuda")
    state, _, config = _setup(
        device, "method.name='ibot'", "run.precision='bf16'", "head.num_prototypes=4096"
    )
    maker = InputMaker(config, DistInfo(0, 1, 0, device))
    batch = _uint8_batch(config, device)
    train_step(state, *maker(batch, 0), step_values(config, 10, 100))
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(state, *maker(batch, 0), step_values(config, 11, 100))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs
    assert state.step == 2


def test_masked_tokens_gather_what_a_boolean_index_gathers() -> None:
    gen = torch.Generator().manual_seed(0)
    grid = torch.rand(6, 3, 5, generator=gen) < 0.4  # [N, h, w]
    masks = MaskedTokens.from_grid(grid)
    patches = torch.randn(6, 15, 8, generator=gen, requires_grad=True)  # [N, h*w, E]
    expected_rows = patches[grid.flatten(1)]  # [Nm, E]
    assert torch.equal(masks.gather(patches), expected_rows)
    assert torch.equal(masks.image_index, grid.flatten(1).nonzero()[:, 0])
    weights = torch.randn_like(expected_rows)
    (grad_gather,) = torch.autograd.grad((masks.gather(patches) * weights).sum(), patches)
    (grad_bool,) = torch.autograd.grad((expected_rows * weights).sum(), patches)
    assert torch.equal(grad_gather, grad_bool)


def test_masked_tokens_refuse_what_is_not_a_mask_grid() -> None:
    with pytest.raises(ValueError, match=r"masks must be bool \[N, h, w\]"):
        MaskedTokens.from_grid(torch.ones(2, 3, 3))  # float, not bool
    with pytest.raises(ValueError, match=r"masks must be bool \[N, h, w\]"):
        MaskedTokens.from_grid(torch.ones(2, 9, dtype=torch.bool))  # not a grid
    masks = MaskedTokens.from_grid(torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected \[2, 9, E\]"):
        masks.gather(torch.zeros(2, 16, 4))  # a 4 x 4 token grid, not 3 x 3
