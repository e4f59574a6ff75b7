"""An iBOT step whose batch has no masked token still runs the patch loss.

Under DDP a rank can draw masks with no masked token while the others have some. If that rank
skipped the patch loss, a separate patch head (head.shared=false) would get no gradient there,
DDP's reducer would wait for it and the next step fails; the ranks would also disagree on the
patch centring's all-reduce. So the loss is always computed: with no masked token it is a zero
attached to the graph, every patch-head parameter gets a zero gradient, and the patch centring
keeps its state.
"""

from __future__ import annotations

import pytest
import torch
from tiny_run import step_state

from fastproto.centering import make_centering
from fastproto.masked_tokens import MaskedTokens
from fastproto.train.step import compute_losses

G, L, B = 2, 2, 4


def _state(centering: str):  # type: ignore[no-untyped-def]
    overrides = ["method.name='ibot'", "head.shared=false", "method.koleo_proto=0.0"]
    return step_state(*overrides, f"method.centering={centering!r}")


@pytest.mark.parametrize("centering", ["probability", "logit", "sinkhorn"])
def test_no_masked_token_gives_an_attached_zero_and_zero_patch_head_gradients(
    centering: str,
) -> None:
    torch.manual_seed(0)
    state = _state(centering)
    assert not state.student.shared
    before = {k: v.clone() for k, v in state.patch_centering.state_dict().items()}
    g = torch.randn(G * B, 3, 28, 28)
    loc = torch.randn(L * B, 3, 12, 12)
    masks = MaskedTokens.from_grid(torch.zeros(G * B, 7, 7, dtype=torch.bool))  # none masked
    losses = compute_losses(state, g, loc, masks, teacher_temp=0.04)
    total, terms = losses.total, losses.shown
    assert terms["ibot"] == 0.0 and torch.isfinite(total)
    total.backward()
    patch_params = dict(state.student.patch_head.named_parameters())
    assert patch_params
    for name, p in patch_params.items():
        assert p.grad is not None, f"patch head {name} got no gradient"
        assert torch.count_nonzero(p.grad) == 0, name
    for name, value in state.patch_centering.state_dict().items():
        assert torch.equal(value, before[name]), name  # an empty batch moves no centring state


@pytest.mark.parametrize("kind", ["logit", "probability", "sinkhorn"])
def test_centring_an_empty_batch_returns_the_last_center_and_keeps_the_state(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1)
    protos = torch.randn(5, 8, generator=gen)
    centering = make_centering(kind, 5, momentum=0.5)
    centering(teacher, protos, 0.1, True, "reference")  # some state first
    state = {k: v.clone() for k, v in centering.state_dict().items()}
    center = centering(teacher[:0], protos, 0.1, True, "reference")
    assert torch.isfinite(center).all()
    if kind == "sinkhorn":  # stateless: nothing to balance, so no shift
        assert torch.equal(center, torch.zeros(5))
    else:  # the EMA schemes return the center from before the batch
        assert torch.equal(center, next(iter(state.values())) / (0.1 if kind == "logit" else 1))
        for name, value in centering.state_dict().items():
            assert torch.equal(value, state[name]), name
