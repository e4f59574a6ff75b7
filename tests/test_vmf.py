"""log C_p(kappa) against scipy, mpmath and the Debye recurrence, written from DLMF/the paper.

Reference values: log C_p(kappa) = nu log kappa - (p/2) log(2 pi) - log I_nu(kappa), nu = p/2 - 1,
with I_nu from scipy.special.ive (float64, where it neither under- nor overflows) or from
mpmath (everywhere). Tolerances for the expansion come from its first omitted term,
max_s |U_terms(s)| / nu^terms, with U_k rebuilt here from the recurrence DLMF 10.41.9.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch

from fastproto.vmf import (
    EXPANSION_MIN_DIM,
    SERIES_MAX_R,
    _log_bessel_i_integral,
    debye_polynomial,
    log_normalizer,
    log_normalizer_exact,
)

DIMS = (2, 3, 4, 5, 8, 64, 128, 256, 768, 4096)
KAPPAS = tuple(np.logspace(-3, 5, 25).tolist())
EXACT_PATH_TOL = 1e-8  # the module's claim for dim < EXPANSION_MIN_DIM


def debye_by_recurrence(count: int) -> list[dict[int, Fraction]]:
    """U_0..U_{count-1} from U_{k+1} = p^2 (1 - p^2) U_k'/2 + (1/8) int_0^p (1 - 5 t^2) U_k dt."""
    polys: list[dict[int, Fraction]] = [{0: Fraction(1)}]
    while len(polys) < count:
        u = polys[-1]
        nxt: dict[int, Fraction] = {}
        for power, c in u.items():
            if power > 0:  # derivative c power p^(power-1), times p^2 (1 - p^2) / 2
                nxt[power + 1] = nxt.get(power + 1, Fraction(0)) + c * power / 2
                nxt[power + 3] = nxt.get(power + 3, Fraction(0)) - c * power / 2
            nxt[power + 1] = nxt.get(power + 1, Fraction(0)) + c / (8 * (power + 1))
            nxt[power + 3] = nxt.get(power + 3, Fraction(0)) - 5 * c / (8 * (power + 3))
        polys.append({k: v for k, v in nxt.items() if v != 0})
    return polys


DEBYE = debye_by_recurrence(5)


def max_abs_debye(k: int) -> float:
    s = np.linspace(0.0, 1.0, 20001)
    values = sum(float(c) * s**power for power, c in DEBYE[k].items())
    return float(np.max(np.abs(values)))


def tolerance(dim: int, terms: int, exact: torch.Tensor) -> torch.Tensor:
    """Allowed |error|: the truncation bound plus float64 rounding of values up to ~1e5."""
    rounding = 1e-14 * exact.abs() + 1e-12
    if dim < EXPANSION_MIN_DIM:
        return EXACT_PATH_TOL + rounding
    nu = dim / 2 - 1
    return 2.0 * max_abs_debye(terms) / nu**terms + rounding


@functools.cache
def exact_values(dim: int) -> torch.Tensor:
    return log_normalizer_exact(torch.tensor(KAPPAS, dtype=torch.float64), dim)


def scipy_log_c(dim: int, kappa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log C_p from scipy.special.ive, mask where ive gave a normal float64 number).

    scipy is imported here, not at the top: the GPU tier's machine may lack it, and collecting
    this module there (for its `gpu` test) must not need it.
    """
    special = pytest.importorskip("scipy.special")
    nu = dim / 2 - 1
    scaled = special.ive(nu, kappa)  # I_nu(kappa) exp(-kappa)
    ok = np.isfinite(scaled) & (scaled > 1e-290)
    with np.errstate(divide="ignore"):
        log_i = np.log(scaled) + kappa
    return nu * np.log(kappa) - dim / 2 * math.log(2 * math.pi) - log_i, ok


def best_terms(dim: int) -> int:
    return 4 if dim >= EXPANSION_MIN_DIM else 1


def test_debye_polynomials_match_recurrence() -> None:
    for k in range(4):
        ours = dict(debye_polynomial(k))
        assert set(ours) == set(DEBYE[k]), k
        for power, c in DEBYE[k].items():
            assert ours[power] == pytest.approx(float(c), rel=1e-15, abs=0)


def test_exact_reference_matches_scipy_where_scipy_is_accurate() -> None:
    kappa = np.array(KAPPAS)
    for dim in DIMS:
        ref, ok = scipy_log_c(dim, kappa)
        exact = exact_values(dim).numpy()
        assert ok.sum() >= 5, dim
        np.testing.assert_allclose(exact[ok], ref[ok], rtol=1e-13, atol=1e-10, err_msg=str(dim))


def test_integral_fallback_matches_mpmath_series() -> None:
    with mpmath.workdps(40):
        for nu, z in [(1.0, 0.5), (3.0, 40.0), (31.5, 2.0), (127.0, 300.0), (2047.0, 1e4)]:
            series = mpmath.log(mpmath.besseli(nu, z, maxterms=10**5))
            integral = _log_bessel_i_integral(mpmath.mpf(nu), mpmath.mpf(z))
            assert abs(float(series - integral)) < 1e-25 * max(1.0, abs(float(series)))


def test_matches_scipy_where_scipy_is_accurate() -> None:
    kappa = np.array(KAPPAS)
    for dim in DIMS:
        ref, ok = scipy_log_c(dim, kappa)
        ref_t = torch.from_numpy(ref[ok])
        got = log_normalizer(torch.from_numpy(kappa[ok]), dim, terms=best_terms(dim))
        err = (got - ref_t).abs()
        assert bool((err <= tolerance(dim, best_terms(dim), ref_t) + 1e-10).all()), (dim, err)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("terms", [1, 2, 3, 4])
def test_matches_mpmath_everywhere(dim: int, terms: int) -> None:
    exact = exact_values(dim)
    got = log_normalizer(torch.tensor(KAPPAS, dtype=torch.float64), dim, terms=terms)
    err = (got - exact).abs()
    assert bool((err <= tolerance(dim, terms, exact)).all()), err.max()


@pytest.mark.parametrize("dim", [2, 5, 64, 256, 768])
def test_differences_between_kappas_match_exact(dim: int) -> None:
    """A softmax over prototypes sees log C_p(kappa_i) - log C_p(kappa_j), not the level."""
    exact = exact_values(dim)
    got = log_normalizer(torch.tensor(KAPPAS, dtype=torch.float64), dim, terms=1)
    diff_got = got[:, None] - got[None, :]
    diff_exact = exact[:, None] - exact[None, :]
    tol = 2 * tolerance(dim, 1, exact.abs().max())
    assert bool(((diff_got - diff_exact).abs() <= tol).all())


def test_monotone_decreasing() -> None:
    kappa = torch.logspace(-3, 5, 2001, dtype=torch.float64)
    for dim in (*DIMS, 17, 31, 32):
        # Dense points across the switch R = sqrt(nu^2 + kappa^2) = 64 of the small-dim path.
        grids = [kappa]
        if dim < EXPANSION_MIN_DIM:
            at = math.sqrt(SERIES_MAX_R**2 - (dim / 2 - 1) ** 2)
            grids.append(torch.linspace(at - 0.5, at + 0.5, 1001, dtype=torch.float64))
        for terms in (1, 4):
            for grid in grids:
                values = log_normalizer(grid, dim, terms=terms)
                steps = values.diff()
                assert bool((steps <= 0).all()), (dim, terms)
                # Strict where the true step is far above float64 resolution.
                assert bool((steps[grid[1:] > 1e-2] < 0).all()), (dim, terms)
                f32 = log_normalizer(grid.float(), dim, terms=terms)
                assert bool((f32.diff() <= 0).all()), (dim, terms)


@pytest.mark.parametrize("dim", DIMS)
def test_float32_finite_and_rounded_from_float64(dim: int) -> None:
    kappa = torch.logspace(-3, 5, 201, dtype=torch.float32).requires_grad_(True)
    for terms in (1, 4):
        out = log_normalizer(kappa, dim, terms=terms)
        assert out.dtype == torch.float32
        assert bool(torch.isfinite(out).all())
        ref = log_normalizer(kappa.detach().double(), dim, terms=terms)
        torch.testing.assert_close(out.double(), ref, rtol=1.2e-7, atol=0.0)
        (grad,) = torch.autograd.grad(out.sum(), kappa)
        assert bool(torch.isfinite(grad).all())


def test_half_precision_input_gives_float32() -> None:
    out = log_normalizer(torch.tensor([1.0, 1e4], dtype=torch.float16), 256)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("dim", [2, 3, 5, 31, 32, 256, 4096])
@pytest.mark.parametrize("terms", [1, 4])
def test_gradcheck(dim: int, terms: int) -> None:
    kappa = torch.tensor(
        [1e-3, 0.3, 7.0, 63.0, 65.0, 900.0, 1e5], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda k: log_normalizer(k, dim, terms=terms), (kappa,))


@pytest.mark.parametrize("dim", [2, 3, 8, 31, 256])
def test_gradient_is_minus_bessel_ratio(dim: int) -> None:
    """d/dkappa log C_p(kappa) = -I_{p/2}(kappa) / I_{p/2-1}(kappa) (DLMF 10.29.4)."""
    points = [1e-3, 0.5, 10.0, 63.9, 64.1, 500.0, 2e4]
    kappa = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(log_normalizer(kappa, dim, terms=4).sum(), kappa)
    nu = dim / 2 - 1
    with mpmath.workdps(30):
        ratio = [float(mpmath.besseli(nu + 1, z) / mpmath.besseli(nu, z)) for z in points]
    torch.testing.assert_close(grad, -torch.tensor(ratio, dtype=torch.float64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("dim", [32, 64, 128, 256, 768, 4096])
def test_more_terms_not_worse(dim: int) -> None:
    exact = exact_values(dim)
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    worst = [(log_normalizer(kappa, dim, terms=t) - exact).abs().max().item() for t in range(1, 5)]
    rounding = 1e-14 * exact.abs().max().item()
    for fewer, more in zip(worst, worst[1:], strict=False):
        assert more <= fewer + rounding, worst


def test_small_dims_ignore_terms() -> None:
    kappa = torch.logspace(-3, 5, 50, dtype=torch.float64)
    for dim in (2, 9, EXPANSION_MIN_DIM - 1):
        torch.testing.assert_close(
            log_normalizer(kappa, dim, terms=1), log_normalizer(kappa, dim, terms=4)
        )


def test_small_kappa_gives_uniform_density() -> None:
    """kappa -> 0: log C_p -> -log |S^{p-1}| = lgamma(p/2) - log 2 - (p/2) log pi."""
    for dim in (2, 3, 40, 4096):
        uniform = math.lgamma(dim / 2) - math.log(2) - dim / 2 * math.log(math.pi)
        got = log_normalizer(torch.tensor([1e-9], dtype=torch.float64), dim, terms=4)
        assert got.item() == pytest.approx(uniform, abs=1e-8)


@pytest.mark.parametrize("dim", [1, 0, -3, 2.5, 256.0, "256", True, None])
def test_bad_dim(dim: object) -> None:
    kappa = torch.ones(3)
    with pytest.raises(ValueError, match="dim"):
        log_normalizer(kappa, dim)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        log_normalizer_exact(kappa, dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("terms", [0, 5, -1, 1.0, True, "2"])
def test_bad_terms(terms: object) -> None:
    with pytest.raises(ValueError, match="terms"):
        log_normalizer(torch.ones(3), 256, terms=terms)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "word"), [(0.0, "non-positive"), (-1.0, "non-positive"), (math.nan, "NaN")]
)
def test_bad_kappa(value: float, word: str) -> None:
    kappa = torch.tensor([1.0, value, 2.0])
    with pytest.raises(ValueError, match=f"1 {word}"):
        log_normalizer(kappa, 256)
    with pytest.raises(ValueError, match=f"1 {word}"):
        log_normalizer_exact(kappa, 256)


def test_bad_kappa_type_and_infinity() -> None:
    with pytest.raises(ValueError, match="1 infinite"):
        log_normalizer(torch.tensor([math.inf]), 64)
    with pytest.raises(ValueError, match="torch.Tensor"):
        log_normalizer([1.0, 2.0], 64)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    kappa = torch.logspace(-3, 5, 101, dtype=dtype)
    for dim in (3, 256):
        cpu = log_normalizer(kappa, dim, terms=2)
        gpu = log_normalizer(kappa.cuda(), dim, terms=2)
        assert gpu.device.type == "cuda" and gpu.dtype == dtype
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)
