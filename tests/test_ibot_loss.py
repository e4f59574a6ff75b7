"""ibot_patch_loss against iBOT's masked-token formula looped over images and tokens, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
from loss_loops import ibot_loss_loop, require_impl, teacher_logits_loop

from fastproto.losses import ibot_patch_loss

IMPLS = ["reference", "chunked"]
DIM, TOKENS, GLOBAL = 16, 5, 2
SETTINGS = [(0.1, 0.04, False), (0.2, 0.07, True), (0.1, 0.1, True)]


def _tokens(images: int, k: int, centred: bool):
    """Full token grids [I, T, D], masks [I, T] (image 0 never masked), prototypes, center."""
    student = torch.nn.functional.normalize(torch.randn(images, TOKENS, DIM), dim=2).double()
    teacher = torch.nn.functional.normalize(torch.randn(images, TOKENS, DIM), dim=2).double()
    masks = torch.rand(images, TOKENS) < 0.4
    if images > 1:
        masks[0] = False  # an image with no masked token must count as zero
    masks[-1, 0] = True  # and at least one token is masked overall
    protos = []
    for _ in range(2):
        w = torch.nn.functional.normalize(torch.randn(k, DIM), dim=1)
        protos.append((w * (0.5 + 2.5 * torch.rand(k, 1))).double())
    center = (torch.randn(k) if centred else torch.zeros(k)).double()
    return student, teacher, masks, protos[0], protos[1], center


def _gather(student, teacher, masks):
    """The masked tokens in one buffer [Nm, D] each, and the image of each token [Nm]."""
    image_index = torch.arange(masks.shape[0])[:, None].expand_as(masks)[masks]
    return student[masks], teacher[masks], image_index


def _grid():
    shapes = itertools.product((1, 3, 8), (1, 7, 64, 130), (False, True))
    return [(*shape, SETTINGS[i % len(SETTINGS)]) for i, shape in enumerate(shapes)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", _grid(), ids=str)
def test_ibot_loss_matches_loop(impl: str, case) -> None:
    require_impl(impl)
    batch, k, vmf, (tau_s, tau_t, centred) = case
    images = GLOBAL * batch
    student, teacher, masks, w_s, w_t, center = _tokens(images, k, centred)
    s_masked, t_masked, image_index = _gather(student, teacher, masks)
    got = ibot_patch_loss(
        s_masked,
        t_masked,
        image_index,
        images,
        w_s,
        w_t,
        center,
        tau_s,
        tau_t,
        vmf,
        impl,
        raw_means=True,
    )
    want = ibot_loss_loop(student, teacher, masks, w_s, w_t, center, tau_s, tau_t, vmf)
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-12)
    logits = teacher_logits_loop(t_masked, w_t, tau_t, vmf)  # [Nm, K], uncentred
    probs = torch.softmax(logits - center, dim=1)
    torch.testing.assert_close(got.mean_probs, probs.mean(dim=0), rtol=1e-10, atol=1e-12)
    raw = torch.softmax(logits, dim=1).mean(dim=0)
    torch.testing.assert_close(got.raw_means, raw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch,k,vmf", list(itertools.product((1, 3), (7, 130), (False, True))))
def test_ibot_gradients_match_loop(impl: str, batch: int, k: int, vmf: bool) -> None:
    require_impl(impl)
    images = GLOBAL * batch
    student, teacher, masks, w_s, w_t, center = _tokens(images, k, centred=True)
    student.requires_grad_(True)
    w_s.requires_grad_(True)
    s_masked, t_masked, image_index = _gather(student, teacher, masks)
    upstream = torch.randn((), dtype=torch.float64)
    result = ibot_patch_loss(
        s_masked, t_masked, image_index, images, w_s, w_t, center, 0.1, 0.05, vmf, impl
    )
    assert result.raw_means is None  # not asked for
    loss = result.loss
    want = ibot_loss_loop(student, teacher, masks, w_s, w_t, center, 0.1, 0.05, vmf)
    got_grads = torch.autograd.grad(loss * upstream, (student, w_s))
    want_grads = torch.autograd.grad(want * upstream, (student, w_s))
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(got_grads[0][~masks], torch.zeros_like(got_grads[0][~masks]))


def test_no_masked_token_gives_zero_loss_attached_to_the_graph() -> None:
    w_s = torch.randn(6, DIM, requires_grad=True)
    w_t = torch.randn(6, DIM)
    empty = torch.zeros(0, DIM, requires_grad=True)
    index = torch.zeros(0, dtype=torch.long)
    got = ibot_patch_loss(
        empty,
        empty.detach(),
        index,
        4,
        w_s,
        w_t,
        torch.zeros(6),
        0.1,
        0.04,
        True,
        "reference",
        raw_means=True,
    )
    assert got.loss.item() == 0.0 and got.loss.requires_grad
    got.loss.backward()
    assert w_s.grad is not None and torch.equal(w_s.grad, torch.zeros_like(w_s))
    assert torch.equal(got.mean_probs, torch.full((6,), 1 / 6))
    assert got.raw_means is not None and torch.equal(got.raw_means, torch.zeros(6))


def test_bad_input_raises_value_error() -> None:
    student, teacher, masks, w_s, w_t, center = _tokens(4, 5, centred=False)
    s, t, index = _gather(student, teacher, masks)

    def call(s=s, t=t, index=index, images=4, w_s=w_s, center=center):
        return ibot_patch_loss(s, t, index, images, w_s, w_t, center, 0.1, 0.04, False, "reference")

    with pytest.raises(ValueError, match="must both be"):
        call(t=t[:-1])
    with pytest.raises(ValueError, match="image_index must be int64"):
        call(index=index[:-1])
    with pytest.raises(ValueError, match="image_index must be int64"):
        call(index=index.int())
    with pytest.raises(ValueError, match="image_index must lie"):
        call(images=int(index.max()))
    with pytest.raises(ValueError, match="image_index must lie"):
        call(index=torch.cat([index.new_tensor([-1]), index[1:]]))
    with pytest.raises(ValueError, match="num_images"):
        call(images=0)
    with pytest.raises(ValueError, match="D="):
        call(s=s[:, :8], t=t[:, :8])
    with pytest.raises(ValueError, match="center"):
        call(center=center[:3])
