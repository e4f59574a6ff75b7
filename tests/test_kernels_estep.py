"""The E-step statistics a prototype loss hands to the prototypes' online EM (`estep=`), and the
probability-centring means made in the same sweeps, against a float64 oracle built here.

    b[m, k] = <w_k, y_m> / tau_t + log C_p(||w_k|| / tau_t) - c[k],   r[m] = softmax(b[m])
    mass = sum_m r[m]  [K],   resultant = r^T Y_t  [K, D]

with c = 0 for estep "uncentred" and c = the loss's centre for "centred".
"""

from __future__ import annotations

import pytest
import torch
from fastproto.kernels import ESTEPS, prototype_cross_entropy, teacher_responsibilities
from fastproto.kernels.chunked import prototype_cross_entropy_chunked

from fastproto.vmf import log_normalizer

TS, TT = 0.1, 0.04
NS, NT, K, D, P = 9, 6, 37, 8, 2


def _case(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize

    def protos() -> torch.Tensor:
        w = unit(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
        return w * torch.empty(K, 1, dtype=torch.float64).uniform_(0.3, 2.5, generator=g)

    return {
        "student": unit(torch.randn(NS, D, generator=g, dtype=torch.float64), dim=1),
        "teacher": unit(torch.randn(NT, D, generator=g, dtype=torch.float64), dim=1),
        "student_protos": protos(),
        "teacher_protos": protos(),
        "targets": torch.randint(-1, NT, (NS, P), generator=g),
        "weights": torch.rand(NS, P, generator=g, dtype=torch.float64) + 0.1,
        "center": torch.randn(K, generator=g, dtype=torch.float64),
    }


def _softmax_oracle(c: dict[str, torch.Tensor], shift: torch.Tensor) -> torch.Tensor:
    """r [Nt, K] row by row: the teacher's vMF logits minus `shift`, normalised."""
    w = c["teacher_protos"]
    bias = log_normalizer(w.norm(dim=1) / TT, D)
    rows = []
    for y in c["teacher"]:
        b = w @ y / TT + bias - shift
        rows.append(torch.exp(b - torch.logsumexp(b, dim=0)))
    return torch.stack(rows)


def _args(c: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple:
    f = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in c.items()}
    return (
        f["student"],
        f["teacher"],
        f["student_protos"],
        f["teacher_protos"],
        f["targets"],
        f["weights"],
        f["center"],
        TS,
        TT,
        True,
    )


@pytest.mark.parametrize("impl", ["reference", "chunked", "triton"])
@pytest.mark.parametrize("estep", ESTEPS)
def test_loss_hands_over_the_e_step_of_its_teacher_rows(impl: str, estep: str) -> None:
    c = _case(0)
    dtype = torch.float64 if impl != "triton" else torch.float32
    result = prototype_cross_entropy(*_args(c, dtype), impl=impl, raw_means=True, estep=estep)
    shift = c["center"] if estep == "centred" else torch.zeros(K, dtype=torch.float64)
    r = _softmax_oracle(c, shift)  # [Nt, K]
    stats = result.responsibilities
    assert stats is not None
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(stats.mass.double(), r.sum(dim=0), **tol)
    torch.testing.assert_close(stats.resultant.double(), r.T @ c["teacher"], **tol)
    raw = _softmax_oracle(c, torch.zeros(K, dtype=torch.float64)).mean(dim=0)
    assert result.raw_means is not None
    torch.testing.assert_close(result.raw_means.double(), raw, **tol)
    assert abs(float(stats.mass.sum()) - NT) < 1e-4  # each teacher row counts once


@pytest.mark.parametrize("block", [1, 5, 16, K])
def test_asking_for_the_statistics_leaves_the_loss_and_its_gradients_as_they_were(
    block: int,
) -> None:
    """The uncentred sweep shares the loss's tiles; the loss, its targets and gradients must not
    move by more than rounding, at any block size."""
    c = _case(1)
    outs = []
    for extra in ({}, {"raw_means": True, "estep": "uncentred"}, {"estep": "centred"}):
        ys, ws = c["student"].clone().requires_grad_(), c["student_protos"].clone().requires_grad_()
        args = list(_args(c, torch.float64))
        args[0], args[2] = ys, ws
        result = prototype_cross_entropy_chunked(*args, block=block, **extra)
        gy, gw = torch.autograd.grad(result.loss, [ys, ws])
        outs.append((result.loss.detach(), result.mean_probs, gy, gw))
        if "estep" in extra:
            stats = result.responsibilities
            assert stats is not None
            shift = c["center"] if extra["estep"] == "centred" else c["center"] * 0
            r = _softmax_oracle(c, shift)
            torch.testing.assert_close(stats.resultant, r.T @ c["teacher"], rtol=1e-9, atol=1e-12)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_teacher_only_statistics_match_the_loss_statistics() -> None:
    c = _case(2)
    args = _args(c, torch.float32)
    for estep in ESTEPS:
        fused = prototype_cross_entropy(*args, impl="chunked", estep=estep).responsibilities
        shift = args[6] if estep == "centred" else torch.zeros_like(args[6])
        alone = teacher_responsibilities(args[1], args[3], shift, TT, True, impl="chunked")
        assert fused is not None
        torch.testing.assert_close(fused.mass, alone.mass, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fused.resultant, alone.resultant, rtol=1e-6, atol=1e-7)


def test_no_statistics_unless_asked_and_a_bad_estep_is_refused() -> None:
    args = _args(_case(3), torch.float32)
    result = prototype_cross_entropy(*args, impl="chunked")
    assert result.responsibilities is None and result.raw_means is None
    with pytest.raises(ValueError, match="estep must be None or one of"):
        prototype_cross_entropy(*args, impl="chunked", estep="centered")
