"""aligned_cross_entropy (student row n against teacher row n, iBOT) against the float64 oracle.

The triton impl makes the loss and both gradients in one sweep after the two row log-sum-exps
(kernels/triton_aligned.py); judged as tests/test_kernels.py judges the general path: error at
most twice that of the reference run in the same precision, plus a floor.
"""

from __future__ import annotations

import pytest
import torch
from fastproto.kernels import (
    LossResult,
    aligned_cross_entropy,
    teacher_statistics,
)
from kernel_launches import Launches, count_launches
from test_kernels import (
    FLOOR,
    STUDENT_TEMP,
    TEACHER_TEMP,
    Case,
    assert_close_rel,
    assert_grads_like_reference,
    make_case,
    max_err,
    truth,
)


def aligned_case(n: int, k: int, d: int, vmf: bool = True, centred: bool = True) -> Case:
    """Rows paired with themselves, about 30 % of them of weight 0 (iBOT's mask as weight)."""
    return make_case(n, n, k, d, 1, vmf=vmf, centred=centred, identity=True)


def aligned_loss(
    c: Case, impl: str, raw_means: bool = False
) -> tuple[torch.Tensor, torch.Tensor, LossResult]:
    """(student rows, student prototypes, both requiring grad, and the aligned loss on them)."""
    ys = c.student.clone().requires_grad_()
    ws = c.student_protos.clone().requires_grad_()
    result = aligned_cross_entropy(
        ys,
        c.teacher,
        ws,
        c.teacher_protos,
        c.weights[:, 0],
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
        impl=impl,
        raw_means=raw_means,
    )
    return ys, ws, result


def run_aligned(c: Case, impl: str, grad_scale: float) -> list[torch.Tensor]:
    """The same six figures as test_kernels.run, through aligned_cross_entropy."""
    ys, ws, result = aligned_loss(c, impl)
    loss, mean_probs = result.loss, result.mean_probs
    lse, col = teacher_statistics(
        c.teacher, c.teacher_protos, c.center, TEACHER_TEMP, c.vmf, impl=impl
    )
    gy, gw = torch.autograd.grad(loss * grad_scale, [ys, ws])
    return [loss.detach(), gy, gw, mean_probs, lse, col]


def assert_like_reference(c: Case, impl: str, dtype: torch.dtype, scale: float) -> list:
    want = truth(c, scale)
    low = c.cast(dtype)
    got = run_aligned(low, impl, scale)
    assert_close_rel(got, want, max_err(run_aligned(low, "reference", scale), want), dtype)
    return got


# (N, K, D): one row and one prototype, primes, K below one interpreter block (32), K over
# several blocks and splits, D not a power of two
SHAPES = [(1, 1, 16), (5, 7, 16), (13, 37, 24), (40, 97, 20), (17, 2053, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
def test_aligned_matches_oracle(impl: str, dtype: torch.dtype, shape: tuple) -> None:
    for vmf, centred in ((True, True), (False, False)):
        got = assert_like_reference(aligned_case(*shape, vmf, centred), impl, dtype, 1.3)
        assert got[0].dtype == torch.float32


@pytest.mark.parametrize("programs", [1, 6, 512])
def test_aligned_sweep_over_row_blocks_and_k_splits(
    monkeypatch: pytest.MonkeyPatch, programs: int
) -> None:
    """40 rows are 3 row blocks of 16 (the last partial) and K = 97 is 4 blocks of 32 (the last
    with one prototype): TARGET_PROGRAMS = 1 makes one split, 6 two splits (the cross term and
    dY are per-split partials), 512 one K block per split; dW, dB and the column sums are
    atomic adds from every row block. Rows of weight 0 get no gradient."""
    import fastproto.kernels.triton_loss as tl_mod

    monkeypatch.setattr(tl_mod, "TARGET_PROGRAMS", programs)
    c = aligned_case(40, 97, 24)
    got = assert_like_reference(c, "triton", torch.float32, -0.8)
    zero = c.weights[:, 0] == 0
    assert bool(zero.any()) and float(got[1][zero].abs().max()) == 0.0
    cfg = tl_mod.backward_config(tl_mod._config(24, torch.float32))
    assert tl_mod._splits(40, 97, cfg)[0] == {1: 1, 6: 2, 512: 4}[programs]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_aligned_half_rows_float32_prototypes(dtype: torch.dtype) -> None:
    """Autocast's operands: the gradients keep their dtypes, errors as the general path's."""
    c = aligned_case(21, 45, 16).cast(torch.float64)
    want = truth(c, 1.0)
    half = Case(
        c.student.to(dtype),
        c.teacher.to(dtype),
        c.student_protos.float(),
        c.teacher_protos.float(),
        c.targets,
        c.weights.float(),
        c.center.float(),
        c.vmf,
    )
    baseline = max_err(run_aligned(c.cast(dtype), "reference", 1.0), want)
    got = run_aligned(half, "triton", 1.0)
    assert got[1].dtype == dtype and got[2].dtype == torch.float32
    assert_close_rel(got, want, baseline, dtype)


def _grads(c: Case, impl: str, need_y: bool, need_w: bool) -> list[torch.Tensor | None]:
    ys = c.student.clone().requires_grad_(need_y)
    ws = c.student_protos.clone().requires_grad_(need_w)
    loss = aligned_cross_entropy(
        ys,
        c.teacher,
        ws,
        c.teacher_protos,
        c.weights[:, 0],
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
        impl=impl,
    ).loss
    wanted = [t for t, on in ((ys, need_y), (ws, need_w)) if on]
    grads = iter(torch.autograd.grad(loss * 1.7, wanted))
    return [next(grads) if on else None for on in (need_y, need_w)]


@pytest.mark.parametrize("need", [(True, False), (False, True)], ids=["student", "protos"])
def test_aligned_partial_gradients(need: tuple[bool, bool]) -> None:
    """Frozen prototypes make dY alone, a detached student dW and dB alone (with vmf, dB
    reaches ||w_s|| through autograd)."""
    assert_grads_like_reference(_grads, aligned_case(19, 50, 16).cast(torch.float32), need)


def _count_launches(monkeypatch: pytest.MonkeyPatch) -> tuple[Launches, Launches]:
    import fastproto.kernels.triton_aligned as al_mod
    import fastproto.kernels.triton_loss as tl_mod

    return count_launches(monkeypatch, tl_mod, "_row_lse_kernel"), count_launches(
        monkeypatch, al_mod, "_aligned_grad_kernel"
    )


def test_aligned_passes_two_row_sweeps_and_one_gradient_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards the aligned rows' cost in bench/results/kernel_passes.md, 6 passes: forward and
    backward together launch the row log-sum-exp twice and the fused sweep once, with dY and dW;
    the backward launches nothing."""
    lse, sweep = _count_launches(monkeypatch)
    c = aligned_case(9, 40, 16).cast(torch.float32)
    ys = c.student.clone().requires_grad_()
    ws = c.student_protos.clone().requires_grad_()
    loss = aligned_cross_entropy(
        ys,
        c.teacher,
        ws,
        c.teacher_protos,
        c.weights[:, 0],
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
        impl="triton",
    ).loss
    assert lse.calls == [{"HAS_RAW": False}] * 2
    assert sweep.calls == [{"HAS_DY": True, "HAS_DW": True, "HAS_RAW": False}]
    loss.backward()
    assert len(lse.calls) == 2 and len(sweep.calls) == 1
    assert ys.grad is not None and ws.grad is not None


def test_aligned_without_grad_mode_makes_no_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the no-grad cost, 4 passes (kernels/triton_aligned.py): under no_grad the sweep
    makes the loss and column sums only, with the same values."""
    c = aligned_case(9, 40, 16).cast(torch.float32)
    args = (
        c.student.requires_grad_(),
        c.teacher,
        c.student_protos,
        c.teacher_protos,
        c.weights[:, 0],
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
    )
    with_grad = aligned_cross_entropy(*args, impl="triton")
    _, sweep = _count_launches(monkeypatch)
    with torch.no_grad():
        without = aligned_cross_entropy(*args, impl="triton")
    assert sweep.calls == [{"HAS_DY": False, "HAS_DW": False, "HAS_RAW": False}]
    for x, y in ((with_grad.loss, without.loss), (with_grad.mean_probs, without.mean_probs)):
        torch.testing.assert_close(x.detach(), y, rtol=1e-6, atol=1e-6)


def test_aligned_unfused_width_takes_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fused kernel is not used (BLOCK_D = 1024 when compiled; forced here), the
    general pair-table kernels give the same figures."""
    import fastproto.kernels.triton_loss as tl_mod
    from fastproto.kernels.triton_aligned import aligned_config

    c = aligned_case(23, 45, 24).cast(torch.float32)
    fused = run_aligned(c, "triton", 1.1)
    monkeypatch.setattr(tl_mod, "FUSED_MAX_BLOCK_D", 16)
    assert aligned_config(tl_mod._config(24, torch.float32)) is None
    general = run_aligned(c, "triton", 1.1)
    for x, y in zip(fused, general, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_aligned_rejects_rows_that_do_not_pair() -> None:
    c = aligned_case(6, 8, 16)
    base = (
        c.student,
        c.teacher,
        c.student_protos,
        c.teacher_protos,
        c.weights[:, 0],
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
    )
    with pytest.raises(ValueError, match="aligned rows need"):
        aligned_cross_entropy(c.student[:5], *base[1:], impl="chunked")
    with pytest.raises(ValueError, match="aligned rows need"):
        aligned_cross_entropy(*base[:4], c.weights, *base[5:], impl="chunked")
    with pytest.raises(ValueError, match="impl must be one of"):
        aligned_cross_entropy(*base, impl="fast")


def _raw_means_run(c: Case, impl: str, grad_scale: float = 1.0) -> list[torch.Tensor]:
    """(loss, d loss/d student, d loss/d protos, mean probs, uncentred mean probs)."""
    ys, ws, result = aligned_loss(c, impl, raw_means=True)
    loss, raw = result.loss, result.raw_means
    assert raw is not None
    grads = torch.autograd.grad(loss * grad_scale, [ys, ws])
    return [loss.detach(), *grads, result.mean_probs, raw]


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("programs", [1, 512])
def test_raw_means_are_the_uncentred_teacher_column_means(
    monkeypatch: pytest.MonkeyPatch, impl: str, programs: int
) -> None:
    """Probability centring's batch statistic, mean_n softmax(logits without the centre), made
    by the loss's sweeps on triton: equal to teacher_statistics with a zero centre in float64,
    and the loss and gradients stay those of aligned_cross_entropy."""
    import fastproto.kernels.triton_loss as tl_mod

    monkeypatch.setattr(tl_mod, "TARGET_PROGRAMS", programs)
    c = aligned_case(40, 97, 24)
    zero = torch.zeros_like(c.center)
    want = teacher_statistics(
        c.teacher, c.teacher_protos, zero, TEACHER_TEMP, c.vmf, impl="reference"
    )[1]
    low = c.cast(torch.float32)
    got = _raw_means_run(low, impl)
    torch.testing.assert_close(got[4].double(), want, rtol=1e-5, atol=1e-7)
    assert float((got[4] - got[3]).abs().max()) > 1e-3  # the centre does change the means
    plain = run_aligned(low, impl, 1.0)
    for x, y in zip(got[:4], plain[:4], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_raw_means_with_half_rows(dtype: torch.dtype) -> None:
    """Half embeddings, float32 prototypes: the uncentred means within 2x the error of a
    reference run all in `dtype`, plus the floor."""
    c = aligned_case(21, 45, 16).cast(torch.float64)
    zero = torch.zeros_like(c.center)
    want = teacher_statistics(
        c.teacher, c.teacher_protos, zero, TEACHER_TEMP, c.vmf, impl="reference"
    )[1]
    low = c.cast(dtype)
    base = teacher_statistics(
        low.teacher, low.teacher_protos, zero.to(dtype), TEACHER_TEMP, c.vmf, impl="reference"
    )[1]
    half = Case(
        low.student,
        low.teacher,
        c.student_protos.float(),
        c.teacher_protos.float(),
        c.targets,
        c.weights.float(),
        c.center.float(),
        c.vmf,
    )
    got = _raw_means_run(half, "triton")[4]
    err, base_err = (
        float((got.double() - want).abs().max()),
        float((base.double() - want).abs().max()),
    )
    assert err <= 2 * base_err + FLOOR[dtype] * float(want.abs().max()), (err, base_err)


def test_raw_means_ride_in_the_same_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the raw means the launches stay two row log-sum-exps (the teacher's making both of
    its normalisers from one tile) and one sweep: no pass is added for the statistic."""
    lse, sweep = _count_launches(monkeypatch)
    _raw_means_run(aligned_case(9, 40, 16).cast(torch.float32), "triton")
    assert lse.calls == [{"HAS_RAW": True}, {"HAS_RAW": False}]
    assert sweep.calls == [{"HAS_DY": True, "HAS_DW": True, "HAS_RAW": True}]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [256, 1000])
def test_gpu_aligned_at_ibot_patch_sizes(dtype: torch.dtype, dim: int) -> None:
    """Compiled, at iBOT's patch rows (B = 64, 196 tokens) and K = 8192: against float64. bf16
    at D = 256 is the sweep; float32, and D = 1000 (BLOCK_D = 1024), the general kernels."""
    c = aligned_case(64 * 196, 8192, dim)
    scale = 0.5
    want = run_aligned(c.cast(torch.float64, "cuda"), "reference", scale)
    low = c.cast(dtype, "cuda")
    baseline = max_err(run_aligned(low, "reference", scale), want)
    assert_close_rel(run_aligned(low, "triton", scale), want, baseline, dtype)


@pytest.mark.gpu
def test_gpu_aligned_offsets_past_two_to_the_31() -> None:
    """N * K = 12544 * 262144 > 2^31 through the bf16 sweep (int64 offsets of dY, the cross
    term and the atomics), against chunked in float64: a wrapped offset gives garbage, far
    beyond bf16's rounding."""
    c = aligned_case(64 * 196, 262144, 256)
    assert c.student.shape[0] * c.student_protos.shape[0] > 2**31
    want = run_aligned(c.cast(torch.float64, "cuda"), "chunked", 1.0)
    got = run_aligned(c.cast(torch.bfloat16, "cuda"), "triton", 1.0)
    for g, w in zip(got, want, strict=True):
        scale = max(1.0, float(w.abs().max()))
        assert float((g.double() - w).abs().max()) <= FLOOR[torch.bfloat16] * scale
