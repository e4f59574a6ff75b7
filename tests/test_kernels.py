"""The three prototype-loss implementations against an independent float64 oracle.

The oracle is written from the formulas (DESIGN.md, DINO-vMF eq. for the vMF logit) as plain
loops over (student row, pair), one softmax at a time:

    a_n = W_s y_n / tau_s + log C_p(||w_s|| / tau_s)
    b_m = W_t y_m / tau_t + log C_p(||w_t|| / tau_t) - center
    loss = sum_{n,p: t[n,p] >= 0} weight[n,p] * (logsumexp(a_n) - softmax(b_{t[n,p]}) . a_n)

Low precision is judged relatively: an implementation's error against the oracle may be at most
twice the error of the reference implementation run in that same precision, plus a small floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from fastproto.kernels import prototype_cross_entropy, teacher_statistics
from fastproto.kernels.chunked import (
    prototype_cross_entropy_chunked,
    teacher_statistics_chunked,
)

from fastproto.vmf import log_normalizer

STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.04
FLOOR = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@dataclass
class Case:
    student: torch.Tensor  # [Ns, D]
    teacher: torch.Tensor  # [Nt, D]
    student_protos: torch.Tensor  # [K, D]
    teacher_protos: torch.Tensor  # [K, D]
    targets: torch.Tensor  # [Ns, P]
    weights: torch.Tensor  # [Ns, P]
    center: torch.Tensor  # [K]
    vmf: bool

    def cast(self, dtype: torch.dtype, device: str = "cpu") -> Case:
        def f(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)

        return Case(
            f(self.student),
            f(self.teacher),
            f(self.student_protos),
            f(self.teacher_protos),
            f(self.targets),
            f(self.weights),
            f(self.center),
            self.vmf,
        )


def _protos(k: int, d: int) -> torch.Tensor:
    """Prototypes with norms spread over [0.3, 2.5], so that the vMF term differs per row."""
    w = torch.nn.functional.normalize(torch.randn(k, d, dtype=torch.float64), dim=1)
    return w * torch.empty(k, 1, dtype=torch.float64).uniform_(0.3, 2.5)


def make_case(
    ns: int, nt: int, k: int, d: int, p: int, vmf: bool, centred: bool, identity: bool = False
) -> Case:
    unit = torch.nn.functional.normalize
    student = unit(torch.randn(ns, d, dtype=torch.float64), dim=1)
    teacher = unit(torch.randn(nt, d, dtype=torch.float64), dim=1)
    if identity:  # iBOT: token i against token i, mask as weight
        targets = torch.arange(ns)[:, None].expand(ns, p).clone()
        weights = (torch.rand(ns, p) < 0.7).double()
    else:
        targets = torch.randint(-1, nt, (ns, p))
        if ns > 1:
            targets[0] = -1  # a student row with no teacher at all
        weights = torch.rand(ns, p, dtype=torch.float64) + 0.1
    center = torch.randn(k, dtype=torch.float64) if centred else torch.zeros(k, dtype=torch.float64)
    return Case(student, teacher, _protos(k, d), _protos(k, d), targets, weights, center, vmf)


def _vmf(protos: torch.Tensor, temp: float, on: bool) -> torch.Tensor:
    if not on:
        return torch.zeros(protos.shape[0], dtype=protos.dtype)
    return log_normalizer(protos.norm(dim=1) / temp, protos.shape[1])


def oracle(c: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-loop float64 truth: (loss, teacher mean probs [K], teacher row lse [Nt], probs)."""
    vs = _vmf(c.student_protos, STUDENT_TEMP, c.vmf)
    vt = _vmf(c.teacher_protos, TEACHER_TEMP, c.vmf)
    teacher_probs, teacher_lse = [], []
    for m in range(c.teacher.shape[0]):
        b = c.teacher_protos @ c.teacher[m] / TEACHER_TEMP + vt - c.center  # [K]
        top = b.max()
        lse = top + torch.log(torch.exp(b - top).sum())
        teacher_lse.append(lse)
        teacher_probs.append(torch.exp(b - lse))
    loss = torch.zeros((), dtype=torch.float64)
    for n in range(c.student.shape[0]):
        a = c.student_protos @ c.student[n] / STUDENT_TEMP + vs  # [K]
        lse_a = a.max() + torch.log(torch.exp(a - a.max()).sum())
        for p in range(c.targets.shape[1]):
            m = int(c.targets[n, p])
            if m >= 0:
                loss = loss + c.weights[n, p] * (lse_a - (teacher_probs[m] * a).sum())
    probs = torch.stack(teacher_probs)
    return loss, probs.mean(dim=0), torch.stack(teacher_lse), probs


def run(c: Case, impl: str, grad_scale: float, block: int | None = None) -> list[torch.Tensor]:
    """(loss, d loss/d student, d loss/d student_protos, mean probs, teacher lse, column means)."""
    ys = c.student.clone().requires_grad_()
    ws = c.student_protos.clone().requires_grad_()
    args = (
        ys,
        c.teacher,
        ws,
        c.teacher_protos,
        c.targets,
        c.weights,
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
    )
    if block is None:
        result = prototype_cross_entropy(*args, impl=impl)
        loss, mean_probs = result.loss, result.mean_probs
        lse, col = teacher_statistics(
            c.teacher, c.teacher_protos, c.center, TEACHER_TEMP, c.vmf, impl=impl
        )
    else:
        result = prototype_cross_entropy_chunked(*args, block=block)
        loss, mean_probs = result.loss, result.mean_probs
        lse, col = teacher_statistics_chunked(
            c.teacher, c.teacher_protos, c.center, TEACHER_TEMP, c.vmf, block=block
        )
    gy, gw = torch.autograd.grad(loss * grad_scale, [ys, ws])
    return [loss.detach(), gy, gw, mean_probs, lse, col]


def truth(c: Case, grad_scale: float) -> list[torch.Tensor]:
    ys = c.student.clone().requires_grad_()
    ws = c.student_protos.clone().requires_grad_()
    c64 = Case(
        ys,
        c.teacher,
        ws,
        *[getattr(c, f) for f in ("teacher_protos", "targets", "weights", "center", "vmf")],
    )
    loss, mean_probs, lse, _ = oracle(c64)
    loss = loss + 0.0 * (ys.sum() + ws.sum())  # a graph even when no pair is valid
    gy, gw = torch.autograd.grad(loss * grad_scale, [ys, ws])
    return [loss.detach(), gy, gw, mean_probs, lse, mean_probs]


NAMES = ("loss", "grad_student", "grad_student_protos", "teacher_mean_probs", "row_lse", "col_mean")


def max_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    return [
        float((g.double().cpu() - w.double().cpu()).abs().max())
        for g, w in zip(got, want, strict=True)
    ]


def assert_close_rel(
    got: list[torch.Tensor], want: list[torch.Tensor], baseline: list[float], dtype: torch.dtype
) -> None:
    """Error at most 2x the same-precision reference's error, plus FLOOR relative to the scale."""
    for name, g, w, err, base in zip(NAMES, got, want, max_err(got, want), baseline, strict=True):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        # a float16 reference overflows on large sums (loss > 65504): judge by the floor alone
        base = base if math.isfinite(base) else 0.0
        scale = max(1.0, float(w.abs().max()))
        limit = 2.0 * base + FLOOR[dtype] * scale
        assert err <= limit, f"{name}: error {err:.3g} > limit {limit:.3g} (ref error {base:.3g})"


# (Ns, Nt, K, D, P, identity pairing): 1s, primes, K below one Triton block (32), K an exact
# multiple of it, K spanning several chunked blocks (16) and Triton blocks, D not a power of two.
SHAPES = [
    (1, 1, 1, 16, 1, False),
    (5, 3, 7, 16, 1, False),
    (13, 4, 37, 24, 2, False),
    (17, 7, 97, 32, 3, False),
    (8, 8, 64, 16, 1, True),
    (3, 2, 131, 20, 2, False),
]
VARIANTS = [(False, False), (True, False), (True, True), (False, True)]  # (vmf, centred)


def test_oracle_agrees_with_reference_in_float64() -> None:
    for shape in SHAPES:
        for vmf, centred in VARIANTS:
            c = make_case(*shape[:5], vmf=vmf, centred=centred, identity=shape[5])
            got, want = run(c, "reference", 1.3), truth(c, 1.3)
            for name, err in zip(NAMES, max_err(got, want), strict=True):
                assert err < 1e-9, f"{shape} vmf={vmf} centred={centred} {name}: {err}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_float64_matches_oracle(shape: tuple, variant: tuple[bool, bool]) -> None:
    c = make_case(*shape[:5], vmf=variant[0], centred=variant[1], identity=shape[5])
    scale = float(torch.randn(()))
    want = truth(c, scale)
    for block in (16, 5, 4096):
        for name, err in zip(NAMES, max_err(run(c, "chunked", scale, block), want), strict=True):
            assert err < 1e-9, f"block={block} {name}: {err}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
def test_low_precision_relative_to_reference(impl: str, dtype: torch.dtype, shape: tuple) -> None:
    variants = VARIANTS if shape[2] == 97 else VARIANTS[1:3]  # every variant on one shape
    for vmf, centred in variants:
        c = make_case(*shape[:5], vmf=vmf, centred=centred, identity=shape[5])
        scale = float(torch.randn(()))
        want = truth(c, scale)
        low = c.cast(dtype)
        baseline = max_err(run(low, "reference", scale), want)
        assert_close_rel(run(low, impl, scale), want, baseline, dtype)


@pytest.mark.parametrize("impl", ["chunked", pytest.param("triton", marks=pytest.mark.slow)])
def test_many_blocks_large_k(impl: str) -> None:
    """K = 2053 (prime): 65 Triton blocks and K splits, 2 chunked blocks."""
    c = make_case(3, 2, 2053, 16, 2, vmf=True, centred=True)
    scale = float(torch.randn(()))
    want = truth(c, scale)
    low = c.cast(torch.float32)
    baseline = max_err(run(low, "reference", scale), want)
    assert_close_rel(run(low, impl, scale), want, baseline, torch.float32)


def mixed_case(dtype: torch.dtype, device: str = "cpu") -> Case:
    """Autocast's operands: half-precision embeddings, float32 prototypes (float64 elsewhere)."""
    c = make_case(9, 4, 45, 16, 2, vmf=True, centred=True).cast(torch.float64, device)
    rest = ("targets", "weights", "center", "vmf")
    protos = (c.student_protos.float(), c.teacher_protos.float())
    return Case(c.student.to(dtype), c.teacher.to(dtype), *protos, *[getattr(c, f) for f in rest])


def assert_mixed_like_autocast(impl: str, dtype: torch.dtype, device: str = "cpu") -> None:
    """Half embeddings with float32 prototypes: gradients keep their dtypes, and the error
    against float64 is at most 2x that of the reference run all in `dtype` (what autocast's
    matmul does: the triton impl makes every dot half precision), plus FLOOR."""
    mixed = mixed_case(dtype, device)
    want = truth(mixed.cast(torch.float64), 1.0)
    baseline = max_err(run(mixed.cast(dtype, device), "reference", 1.0), want)
    got = run(mixed, impl, 1.0)
    assert got[1].dtype == dtype and got[2].dtype == torch.float32
    assert_close_rel(got, want, baseline, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_mixed_dtypes_half_rows_float32_prototypes(impl: str, dtype: torch.dtype) -> None:
    assert_mixed_like_autocast(impl, dtype)


def test_triton_dots_take_the_embeddings_half_dtype() -> None:
    """float32 prototypes do not promote bfloat16 embeddings' dots back to float32 (IEEE, no
    tensor cores); float32 embeddings keep float32 dots whatever the prototypes are."""
    from fastproto.kernels.triton_loss import _dot_dtype

    half, full = torch.zeros(2, 4, dtype=torch.bfloat16), torch.zeros(2, 4)
    assert _dot_dtype([half, half], [full, full]) == torch.bfloat16
    assert _dot_dtype([full, full], [half, half]) == torch.float32
    assert _dot_dtype([half, full], [full]) == torch.float32


def test_chunked_and_triton_agree_in_float32() -> None:
    c = make_case(29, 11, 201, 48, 2, vmf=True, centred=True).cast(torch.float32)
    a, b = run(c, "chunked", 0.7), run(c, "triton", 0.7)
    for name, x, y in zip(NAMES, a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=name)


def _backward_case() -> Case:
    """40 student rows (3 interpreter row blocks of 16, the last partial) against K = 97 (4 blocks
    of 32, the last holding one prototype), with rows of zero weight: row 0 has no teacher at
    all and rows 5 and 6 have teachers but weight 0 (W = 0 gives shift = inf, p = 0)."""
    c = make_case(40, 9, 97, 24, 2, vmf=True, centred=True)
    c.weights[5:7] = 0.0
    return c


@pytest.mark.parametrize("programs", [1, 6, 512])
def test_triton_backward_over_row_and_k_blocks(
    monkeypatch: pytest.MonkeyPatch, programs: int
) -> None:
    """The fused backward adds dW, dB from every row block atomically and carries dY across the
    K blocks of a split. TARGET_PROGRAMS = 1 makes one split of all 4 K blocks per row block,
    6 makes 2 splits of 2 blocks (the second ending in a partial block), 512 one block each."""
    import fastproto.kernels.triton_loss as tl_mod

    monkeypatch.setattr(tl_mod, "TARGET_PROGRAMS", programs)
    c = _backward_case()
    scale = -0.8
    want = truth(c, scale)
    low = c.cast(torch.float32)
    got = run(low, "triton", scale)
    assert_close_rel(got, want, max_err(run(low, "reference", scale), want), torch.float32)
    assert float(got[1][0].abs().max()) == 0.0  # no teacher: no gradient into that row
    assert float(got[1][5:7].abs().max()) == 0.0  # weight 0: none either


@pytest.mark.parametrize("programs", [1, 4, 512])
def test_triton_column_mix_over_row_splits(monkeypatch: pytest.MonkeyPatch, programs: int) -> None:
    """The teacher column sums (mean probabilities, q^T Z in dW, q^T c) are per-split partials
    added up after the kernel. 50 teacher rows are 4 row blocks of 16 (the last partial) and
    K = 45 is 2 prototype blocks: TARGET_PROGRAMS = 1 makes one split, 4 makes 2 splits of 32
    rows (the second with a partial block), 512 makes 4 splits of one block."""
    import fastproto.kernels.triton_loss as tl_mod

    monkeypatch.setattr(tl_mod, "TARGET_PROGRAMS", programs)
    c = make_case(20, 50, 45, 24, 2, vmf=True, centred=True)
    scale = 0.9
    want = truth(c, scale)
    low = c.cast(torch.float32)
    got = run(low, "triton", scale)
    assert_close_rel(got, want, max_err(run(low, "reference", scale), want), torch.float32)
    cfg = tl_mod._config(24, torch.float32)
    assert tl_mod._row_splits(50, 45, cfg)[0] == {1: 1, 4: 2, 512: 4}[programs]


def _grads_with(c: Case, impl: str, need_y: bool, need_w: bool) -> list[torch.Tensor | None]:
    """(d loss/d student, d loss/d student_protos), each None where it is not asked for."""
    ys = c.student.clone().requires_grad_(need_y)
    ws = c.student_protos.clone().requires_grad_(need_w)
    args = (
        ys,
        c.teacher,
        ws,
        c.teacher_protos,
        c.targets,
        c.weights,
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
    )
    loss = prototype_cross_entropy(*args, impl=impl).loss
    wanted = [t for t, on in ((ys, need_y), (ws, need_w)) if on]
    grads = iter(torch.autograd.grad(loss * 1.7, wanted))
    return [next(grads) if on else None for on in (need_y, need_w)]


def assert_grads_like_reference(
    grads: Callable[..., list], c: Case, need: tuple[bool, bool]
) -> None:
    """grads(case, impl, need_y, need_w) -> [dY or None, dW or None]: triton on `c` against
    the reference in float64, the same gradients present and each close."""
    got = grads(c, "triton", *need)
    want = grads(c.cast(torch.float64), "reference", *need)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None and w is not None:
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("need", [(True, False), (False, True)], ids=["student", "protos"])
@pytest.mark.parametrize("vmf", [False, True])
def test_triton_backward_partial_gradients(need: tuple[bool, bool], vmf: bool) -> None:
    """Frozen prototypes launch the kernel for dY alone, a detached student for dW and dB alone
    (with vmf the bias gradient reaches ||w_s|| through autograd)."""
    base = _backward_case()
    fields = (
        "student",
        "teacher",
        "student_protos",
        "teacher_protos",
        "targets",
        "weights",
        "center",
    )
    c = Case(*[getattr(base, f) for f in fields], vmf=vmf).cast(torch.float32)
    assert_grads_like_reference(_grads_with, c, need)


def test_triton_backward_in_two_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fuses_backward says no (BLOCK_D = 1024 when compiled), dY and dW/dB come from two
    launches of the kernel; forced here, they must equal the fused launch's results."""
    import fastproto.kernels.triton_loss as tl_mod

    c = _backward_case().cast(torch.float32)
    fused = run(c, "triton", 1.3)
    monkeypatch.setattr(tl_mod, "FUSED_MAX_BLOCK_D", 16)
    assert not tl_mod.fuses_backward(tl_mod.backward_config(tl_mod._config(24, torch.float32)))
    split = run(c, "triton", 1.3)
    for name, x, y in zip(NAMES, fused, split, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6, msg=name)


def test_auto_is_chunked_on_cpu_and_gradient_reaches_vmf_norm() -> None:
    c = make_case(6, 3, 40, 16, 2, vmf=True, centred=False)
    auto, chunked = run(c, "auto", 1.0), run(c, "chunked", 1.0)
    for x, y in zip(auto, chunked, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # scaling one prototype changes only its vMF term and its logits: the gradient along w_k
    # must include d log C_p / d||w_k||, which vanishes when vmf is off
    c_off = Case(
        *[
            getattr(c, f)
            for f in (
                "student",
                "teacher",
                "student_protos",
                "teacher_protos",
                "targets",
                "weights",
                "center",
            )
        ],
        vmf=False,
    )
    on, off = run(c, "chunked", 1.0)[2], run(c_off, "chunked", 1.0)[2]
    radial = ((on - off) * c.student_protos).sum(dim=1)  # [K]
    assert radial.abs().max() > 1e-3


def test_rejects_bad_input() -> None:
    c = make_case(4, 2, 8, 16, 1, vmf=False, centred=False)
    args = (
        c.student,
        c.teacher,
        c.student_protos,
        c.teacher_protos,
        c.targets,
        c.weights,
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        False,
    )
    with pytest.raises(ValueError, match="impl must be one of"):
        prototype_cross_entropy(*args, impl="fast")
    with pytest.raises(ValueError, match="float64"):
        prototype_cross_entropy(*args, impl="triton")
    with pytest.raises(ValueError, match="block"):
        prototype_cross_entropy_chunked(*args, block=0)
    with pytest.raises(ValueError, match="floating"):
        prototype_cross_entropy(c.student.long(), *args[1:], impl="chunked")
    with pytest.raises(ValueError, match="targets must lie"):
        prototype_cross_entropy(*args[:4], c.targets + 5, *args[5:], impl="chunked")


# ---- GPU tier: the same comparisons at training sizes ------------------------------------

GPU_SHAPES = [
    # (Ns, Nt, K, D, P, identity): DINO CLS rows at batch 64, iBOT patch rows, huge K
    (768, 128, 65536, 256, 2, False),
    (768, 128, 262144, 256, 2, False),
    (64 * 196, 64 * 196, 8192, 256, 1, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_large_shapes(shape: tuple, dtype: torch.dtype) -> None:
    c = make_case(*shape[:5], vmf=True, centred=True, identity=shape[5])
    scale = 0.5
    want = run(c.cast(torch.float64, "cuda"), "reference", scale)
    low = c.cast(dtype, "cuda")
    baseline = max_err(run(low, "reference", scale), want)
    for impl in ("chunked", "triton"):
        assert_close_rel(run(low, impl, scale), want, baseline, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_wide_rows_in_two_launches(dtype: torch.dtype) -> None:
    """D = 1000 (BLOCK_D = 1024), where the teacher mix and the backward are two launches each,
    compiled at DINO CLS sizes, against float64."""
    c = make_case(768, 128, 8192, 1000, 2, vmf=True, centred=True)
    want = run(c.cast(torch.float64, "cuda"), "reference", 0.5)
    low = c.cast(dtype, "cuda")
    baseline = max_err(run(low, "reference", 0.5), want)
    assert_close_rel(run(low, "triton", 0.5), want, baseline, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_mixed_dtypes_like_autocast(dtype: torch.dtype) -> None:
    """Compiled: half dots on tensor cores with float32 prototypes, judged as on the CPU."""
    assert_mixed_like_autocast("triton", dtype, "cuda")


@pytest.mark.gpu
def test_gpu_offsets_past_two_to_the_31() -> None:
    """Ns * K = 12544 * 262144 > 2^31: triton in float32 against chunked in float64."""
    c = make_case(64 * 196, 64 * 196, 262144, 256, 1, vmf=True, centred=True, identity=True)
    assert c.student.shape[0] * c.student_protos.shape[0] > 2**31
    want = run(c.cast(torch.float64, "cuda"), "chunked", 1.0)
    got = run(c.cast(torch.float32, "cuda"), "triton", 1.0)
    for name, g, w in zip(NAMES, got, want, strict=True):
        scale = max(1.0, float(w.abs().max()))
        err = float((g.double() - w).abs().max())
        assert err <= 1e-4 * scale, f"{name}: {err}"


def test_triton_pair_table_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the pair table's cost in bench/results/kernel_passes.md, 8 passes: two row
    log-sum-exps, one teacher mix (V, u, q^T Z and the column sums from each teacher tile) in the
    forward, and a backward that is one pass over the student tiles (dY and dW from the same
    logit tile): 1 + 1 + 3 + 3."""
    import fastproto.kernels.triton_loss as tl_mod
    from kernel_launches import count_launches

    names = ("_row_lse_kernel", "_teacher_mix_kernel", "_student_grad_kernel")
    lse, mix, grad = (count_launches(monkeypatch, tl_mod, name) for name in names)
    run(_backward_case().cast(torch.float32), "triton", 1.0)
    assert len(lse.calls) == 3  # teacher and student rows, then teacher_statistics' own
    assert mix.calls == [{"HAS_V": True, "HAS_M": True, "HAS_RAW": False}]
    assert grad.calls == [{"HAS_DY": True, "HAS_DW": True}]


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_pair_table_raw_means_are_the_uncentred_teacher_column_means(
    monkeypatch: pytest.MonkeyPatch, impl: str
) -> None:
    """Probability centring's batch statistic from the CLS loss: on triton made by the
    teacher's row log-sum-exp (HAS_RAW) and the teacher mix (HAS_RAW) with no launch added,
    equal to teacher_statistics with a zero centre; the loss and gradients stay the same."""
    import fastproto.kernels.triton_loss as tl_mod
    from kernel_launches import count_launches

    c = _backward_case().cast(torch.float32)
    zero = torch.zeros_like(c.center)
    want = teacher_statistics(
        c.teacher.double(),
        c.teacher_protos.double(),
        zero.double(),
        TEACHER_TEMP,
        c.vmf,
        impl="reference",
    )[1]
    lse = count_launches(monkeypatch, tl_mod, "_row_lse_kernel")
    mix = count_launches(monkeypatch, tl_mod, "_teacher_mix_kernel")
    ys, ws = c.student.clone().requires_grad_(), c.student_protos.clone().requires_grad_()
    result = prototype_cross_entropy(
        ys,
        c.teacher,
        ws,
        c.teacher_protos,
        c.targets,
        c.weights,
        c.center,
        STUDENT_TEMP,
        TEACHER_TEMP,
        c.vmf,
        impl=impl,
        raw_means=True,
    )
    loss, mean_probs, raw = result.loss, result.mean_probs, result.raw_means
    assert raw is not None
    torch.testing.assert_close(raw.double(), want, rtol=1e-5, atol=1e-7)
    assert float((raw - mean_probs).abs().max()) > 1e-3  # the centre does change the means
    got = [loss.detach(), *torch.autograd.grad(loss * 1.3, [ys, ws]), mean_probs]
    plain = run(c, impl, 1.3)
    for x, y in zip(got, plain[:4], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    if impl == "triton":
        assert lse.calls[:2] == [{"HAS_RAW": True}, {"HAS_RAW": False}]
        assert mix.calls[0] == {"HAS_V": True, "HAS_M": True, "HAS_RAW": True}
