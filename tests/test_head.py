"""PrototypeHead and make_heads against the formulas of DINO-vMF section 3, written as loops.

logits[n, k] = <w_k, y_n> / tau  (+ log C_p(||w_k|| / tau) in vmf mode)
l2: w_k = v_k / ||v_k||;  free: w_k = g_k v_k / ||v_k||;  vmf: w_k = the parameter row
d/dw_k log C_p(||w_k|| / tau) = -A_p(kappa_k) w_k / (||w_k|| tau),  A_p = I_{p/2} / I_{p/2-1}
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from torch import nn

from fastproto.head import NORMS, PrototypeHead, make_heads
from fastproto.vmf import log_normalizer, log_normalizer_exact


def small_head(norm: str, k: int = 5, d: int = 16, **kwargs: int) -> PrototypeHead:
    return PrototypeHead(12, k, norm, hidden_dim=20, bottleneck_dim=d, **kwargs)


def scramble(head: PrototypeHead) -> None:
    """Move the prototype parameters away from their unit-norm start."""
    with torch.no_grad():
        head.prototype_weight.mul_(torch.rand(head.prototype_weight.shape[0], 1) * 3 + 0.2)
        if head.prototype_gain is not None:
            head.prototype_gain.copy_(torch.rand_like(head.prototype_gain) * 2 + 0.1)


def prototypes_by_formula(head: PrototypeHead) -> list[list[float]]:
    """W from the raw parameters, row by row in plain Python."""
    rows = head.prototype_weight.detach().double().tolist()
    out = []
    for k, v in enumerate(rows):
        scale = 1.0
        if head.norm != "vmf":
            scale = 1.0 / math.sqrt(sum(x * x for x in v))
        if head.prototype_gain is not None:
            scale *= float(head.prototype_gain[k].detach())
        out.append([scale * x for x in v])
    return out


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_shapes_and_layout(norm: str, num_layers: int) -> None:
    head = small_head(norm, k=7, num_layers=num_layers)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU] * (num_layers - 1) + [nn.Linear]
    assert head.mlp[0].in_features == 12 and head.mlp[-1].out_features == 16
    assert head(torch.randn(3, 12)).shape == (3, 16)
    assert head(torch.randn(2, 4, 12)).shape == (2, 4, 16)  # patch tokens [B, T, in]
    assert head.prototypes().shape == (7, 16)
    assert head.logits(head(torch.randn(3, 12)), 0.1).shape == (3, 7)


def test_default_layout_is_dino() -> None:
    head = PrototypeHead(8, 3)
    widths = [(m.in_features, m.out_features) for m in head.mlp if isinstance(m, nn.Linear)]
    assert widths == [(8, 2048), (2048, 2048), (2048, 256)]
    assert head.norm == "vmf" and head.vmf and head.prototypes().shape == (3, 256)


@pytest.mark.parametrize("norm", NORMS)
def test_output_has_unit_norm(norm: str) -> None:
    head = small_head(norm)
    y = head(torch.randn(9, 12) * 5)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(9))


def test_initialisation() -> None:
    head = PrototypeHead(64, 1000, "free", hidden_dim=512, bottleneck_dim=256)
    for layer in head.mlp:
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach()
            assert float(weight.abs().max()) <= 0.04
            assert abs(float(weight.std()) - 0.0176) < 0.002  # std of N(0, .02^2) cut at 2s
            assert bool((layer.bias == 0).all())
    assert head.prototype_gain is not None and bool((head.prototype_gain == 1).all())
    torch.testing.assert_close(head.prototypes().norm(dim=1), torch.ones(1000))


def test_vmf_initial_log_normaliser_is_finite_and_equal() -> None:
    head = PrototypeHead(16, 50, "vmf", hidden_dim=32)
    kappa = head.prototypes().detach().double().norm(dim=1) / 0.1  # [K]
    torch.testing.assert_close(kappa, torch.full((50,), 10.0, dtype=torch.float64))
    log_c = log_normalizer(kappa, 256)  # what the loss adds, [K]
    assert bool(torch.isfinite(log_c).all()) and float(log_c.max() - log_c.min()) < 1e-5
    # Within the one-term expansion error of the exact value (|error| < 1e-3 at p = 256).
    assert abs(float(log_c[0] - log_normalizer_exact(kappa[:1], 256)[0])) < 1e-3


def test_l2_prototypes_have_unit_norm() -> None:
    head = small_head("l2")
    scramble(head)
    norms = head.prototypes().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(5))
    assert not torch.allclose(head.prototype_weight.norm(dim=1), torch.ones(5))


def test_free_prototypes_have_norm_g() -> None:
    head = small_head("free")
    scramble(head)
    assert head.prototype_gain is not None
    torch.testing.assert_close(head.prototypes().norm(dim=1), head.prototype_gain.detach())


@pytest.mark.parametrize("norm", NORMS)
def test_prototypes_follow_formula(norm: str) -> None:
    head = small_head(norm)
    scramble(head)
    expected = torch.tensor(prototypes_by_formula(head), dtype=torch.float64)
    torch.testing.assert_close(head.prototypes().double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("norm", "d"), [("l2", 16), ("free", 16), ("vmf", 16), ("vmf", 256)])
def test_logits_equal_formula(norm: str, d: int) -> None:
    head = small_head(norm, k=6, d=d).double()
    scramble(head)
    tau = 0.07
    y = head(torch.randn(4, 12, dtype=torch.float64))
    w = prototypes_by_formula(head)
    norms = torch.tensor([math.sqrt(sum(x * x for x in row)) for row in w], dtype=torch.float64)
    log_c = log_normalizer_exact(norms / tau, d).tolist() if norm == "vmf" else [0.0] * 6
    expected = torch.zeros(4, 6, dtype=torch.float64)
    for n, y_row in enumerate(y.detach().tolist()):
        for k, w_row in enumerate(w):
            expected[n, k] = sum(a * b for a, b in zip(w_row, y_row, strict=True)) / tau + log_c[k]
    # d < 32 takes log_normalizer's exact path; d = 256 uses the one-term expansion
    # (DINO-vMF's choice), within its first omitted term 2 * max|U_1| / nu = 2 / (12 * 127).
    atol = 1e-8 if d < 32 else 2.0 / (12 * (d / 2 - 1))
    torch.testing.assert_close(head.logits(y, tau), expected, rtol=0, atol=atol)
    if norm != "vmf":
        torch.testing.assert_close(head.logits(y, tau), expected, rtol=0, atol=1e-12)


def test_gradient_reaches_gain_in_free_mode() -> None:
    head = small_head("free")
    y = head(torch.randn(4, 12))
    head.logits(y, 0.1).logsumexp(dim=1).sum().backward()
    assert head.prototype_gain is not None and head.prototype_gain.grad is not None
    assert float(head.prototype_gain.grad.abs().sum()) > 0
    assert head.prototype_weight.grad is not None


def test_gradient_reaches_w_in_vmf_mode_with_log_normaliser_term() -> None:
    """d/dW of sum_n logits[n, k] = sum_n y_n / tau - N A_p(kappa_k) w_k / (||w_k|| tau)."""
    d, tau, n = 8, 0.1, 3
    head = small_head("vmf", k=4, d=d).double()
    scramble(head)
    y = head(torch.randn(n, 12, dtype=torch.float64)).detach()
    head.logits(y, tau).sum().backward()
    grad = head.prototype_weight.grad
    assert grad is not None
    w = head.prototype_weight.detach()
    expected = torch.zeros_like(w)
    with mpmath.workdps(30):
        for k in range(w.shape[0]):
            norm = float(w[k].norm())
            kappa = norm / tau
            ratio = float(mpmath.besseli(d / 2, kappa) / mpmath.besseli(d / 2 - 1, kappa))
            expected[k] = y.sum(dim=0) / tau - n * ratio * w[k] / (norm * tau)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("norm", NORMS)
def test_last_layer_parameters(norm: str) -> None:
    head = small_head(norm)
    names = {id(p): name for name, p in head.named_parameters()}
    got = sorted(names[id(p)] for p in head.last_layer_parameters())
    assert got == (
        ["prototype_gain", "prototype_weight"] if norm == "free" else ["prototype_weight"]
    )


def test_shared_heads_are_one_module() -> None:
    cls_head, patch_head = make_heads(12, 9, "vmf", shared=True, hidden_dim=20, bottleneck_dim=16)
    assert cls_head is patch_head
    same, _ = make_heads(12, 9, "l2", shared=True, patch_prototypes=9, hidden_dim=20)
    assert same.prototypes().shape == (9, 256)


def test_unshared_heads_are_independent() -> None:
    cls_head, patch_head = make_heads(
        12, 9, "free", shared=False, patch_prototypes=5, hidden_dim=20, bottleneck_dim=16
    )
    assert cls_head is not patch_head
    assert cls_head.prototypes().shape == (9, 16) and patch_head.prototypes().shape == (5, 16)
    cls_ids = {id(p) for p in cls_head.parameters()}
    assert cls_ids.isdisjoint(id(p) for p in patch_head.parameters())
    before = [p.detach().clone() for p in patch_head.parameters()]
    with torch.no_grad():
        for p in cls_head.parameters():
            p.add_(1.0)
    for old, p in zip(before, patch_head.parameters(), strict=True):
        assert torch.equal(old, p)
    _, default_patch = make_heads(12, 9, "vmf", shared=False, hidden_dim=20)
    assert default_patch.prototypes().shape[0] == 9  # patch_prototypes defaults to K


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"num_prototypes": 0}, "num_prototypes"),
        ({"num_prototypes": True}, "num_prototypes"),
        ({"in_dim": 1}, "in_dim"),
        ({"hidden_dim": 1}, "hidden_dim"),
        ({"bottleneck_dim": 1}, "bottleneck_dim"),
        ({"bottleneck_dim": 2.0}, "bottleneck_dim"),
        ({"norm": "cosine"}, "norm"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_bad_constructor_input(kwargs: dict[str, object], word: str) -> None:
    args: dict[str, object] = {"in_dim": 12, "num_prototypes": 4, "hidden_dim": 20}
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        PrototypeHead(**args)  # type: ignore[arg-type]


def test_bad_call_input() -> None:
    head = small_head("vmf")
    with pytest.raises(ValueError, match="in_dim=12"):
        head(torch.randn(3, 11))
    y = head(torch.randn(3, 12))
    for temp in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="temp"):
            head.logits(y, temp)
    with pytest.raises(ValueError, match="y must be"):
        head.logits(torch.randn(3, 15), 0.1)
    with pytest.raises(ValueError, match="patch_prototypes"):
        make_heads(12, 4, "vmf", shared=True, patch_prototypes=8, hidden_dim=20)
    with pytest.raises(ValueError, match="shared"):
        make_heads(12, 4, "vmf", shared="yes", hidden_dim=20)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_prototypes"):
        make_heads(12, 4, "vmf", shared=False, patch_prototypes=0, hidden_dim=20)
