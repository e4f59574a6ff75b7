"""dino_loss against a loop over views, images and pairs written from DINO's formula, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
from loss_loops import dino_loss_loop, require_impl, teacher_logits_loop

from fastproto.losses import dino_loss, dino_pairing

IMPLS = ["reference", "chunked"]
DIM = 16
# (student_temp, teacher_temp, centred): cycled over the shape grid below.
SETTINGS = [(0.1, 0.04, False), (0.2, 0.07, True), (0.1, 0.1, True), (0.3, 0.05, False)]


def _grid() -> list[tuple[int, int, int, int, bool, tuple[float, float, bool]]]:
    """Every (B, local crops, K, vmf); G = 1 on every third case with local crops, else 2."""
    cases = []
    shapes = itertools.product((1, 3, 8), (0, 2, 6), (1, 7, 64, 130), (False, True))
    for index, (batch, local, k, vmf) in enumerate(shapes):
        num_global = 1 if local and index % 3 == 0 else 2
        cases.append((batch, local, k, num_global, vmf, SETTINGS[index % len(SETTINGS)]))
    return cases


def _inputs(batch: int, crops: int, num_global: int, k: int, centred: bool):
    """Unit embeddings (as the bottleneck gives) and prototypes with norms in [0.5, 3]."""
    student = torch.nn.functional.normalize(torch.randn(crops * batch, DIM), dim=1)
    teacher = torch.nn.functional.normalize(torch.randn(num_global * batch, DIM), dim=1)
    protos = []
    for _ in range(2):
        w = torch.nn.functional.normalize(torch.randn(k, DIM), dim=1)
        protos.append(w * (0.5 + 2.5 * torch.rand(k, 1)))
    center = torch.randn(k) if centred else torch.zeros(k)
    return [t.double() for t in (student, teacher, *protos, center)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", _grid(), ids=str)
def test_dino_loss_matches_loop(impl: str, case) -> None:
    require_impl(impl)
    batch, local, k, num_global, vmf, (tau_s, tau_t, centred) = case
    student, teacher, w_s, w_t, center = _inputs(batch, num_global + local, num_global, k, centred)
    got = dino_loss(
        student, teacher, w_s, w_t, center, num_global, tau_s, tau_t, vmf, impl, raw_means=True
    )
    want = dino_loss_loop(student, teacher, w_s, w_t, center, num_global, tau_s, tau_t, vmf)
    torch.testing.assert_close(got.loss, want, rtol=1e-10, atol=1e-12)
    logits = teacher_logits_loop(teacher, w_t, tau_t, vmf)  # [G*B, K], uncentred
    probs = torch.softmax(logits - center, dim=1)
    torch.testing.assert_close(got.mean_probs, probs.mean(dim=0), rtol=1e-10, atol=1e-12)
    raw = torch.softmax(logits, dim=1).mean(dim=0)
    torch.testing.assert_close(got.raw_means, raw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "batch,local,k,vmf", list(itertools.product((1, 3), (0, 2), (7, 130), (False, True)))
)
def test_dino_gradients_match_loop(impl: str, batch: int, local: int, k: int, vmf: bool) -> None:
    require_impl(impl)
    student, teacher, w_s, w_t, center = _inputs(batch, 2 + local, 2, k, centred=True)
    student.requires_grad_(True)
    w_s.requires_grad_(True)
    upstream = torch.randn((), dtype=torch.float64)
    result = dino_loss(student, teacher, w_s, w_t, center, 2, 0.1, 0.05, vmf, impl)
    assert result.raw_means is None  # not asked for
    loss = result.loss
    want = dino_loss_loop(student, teacher, w_s, w_t, center, 2, 0.1, 0.05, vmf)
    got_grads = torch.autograd.grad(loss * upstream, (student, w_s))
    want_grads = torch.autograd.grad(want * upstream, (student, w_s))
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_dino_pairing_table_by_hand() -> None:
    # S = 3 crops, G = 2 global, B = 2 images: rows are (crop, image) crop-major.
    targets, weights = dino_pairing(3, 2, 2)
    expected = torch.tensor([[-1, 2], [-1, 3], [0, -1], [1, -1], [0, 2], [1, 3]])
    assert torch.equal(targets, expected)
    pairs = 2 * 3 - 2
    assert torch.equal(weights, (expected >= 0).float() / (2 * pairs))
    assert torch.isclose(weights.sum(), torch.tensor(1.0))


def test_bad_input_raises_value_error() -> None:
    student, teacher, w_s, w_t, center = _inputs(2, 3, 2, 5, centred=False)
    with pytest.raises(ValueError, match="num_global=4 exceeds"):
        dino_loss(student[:4], torch.cat([teacher] * 2), w_s, w_t, center, 4, 0.1, 0.04, False)
    with pytest.raises(ValueError, match="exceeds"):
        dino_pairing(2, 3, 4)
    with pytest.raises(ValueError, match="not a multiple of the batch size"):
        dino_loss(student[:5], teacher, w_s, w_t, center, 2, 0.1, 0.04, False, "reference")
    with pytest.raises(ValueError, match="not a positive multiple of num_global"):
        dino_loss(student, teacher[:3], w_s, w_t, center, 2, 0.1, 0.04, False, "reference")
    with pytest.raises(ValueError, match="num_global must be >= 1"):
        dino_loss(student, teacher, w_s, w_t, center, 0, 0.1, 0.04, False, "reference")
    with pytest.raises(ValueError, match="at least two"):
        dino_loss(student[:2], teacher[:2], w_s, w_t, center, 1, 0.1, 0.04, False, "reference")
    with pytest.raises(ValueError, match="D="):
        dino_loss(student[:, :8], teacher, w_s, w_t, center, 2, 0.1, 0.04, False, "reference")
    with pytest.raises(ValueError, match="center"):
        dino_loss(student, teacher, w_s, w_t, center[:4], 2, 0.1, 0.04, False, "reference")
    with pytest.raises(ValueError, match="2-D"):
        dino_loss(student[0], teacher, w_s, w_t, center, 2, 0.1, 0.04, False, "reference")
