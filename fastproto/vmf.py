"""Log-normaliser of the von Mises-Fisher distribution, log C_p(kappa).

For a unit vector in R^p (p = `dim`, nu = p/2 - 1) the vMF density is C_p(kappa) exp(kappa mu^T y):

    C_p(kappa)     = kappa^nu / ((2 pi)^(p/2) I_nu(kappa))
    log C_p(kappa) = nu log kappa - (p/2) log(2 pi) - log I_nu(kappa)

DINO-vMF (eq. 5) evaluates I_nu with the uniform asymptotic expansion of DLMF 10.41.3,
kappa = nu r, s = (1 + r^2)^(-1/2), eta = (1 + r^2)^(1/2) + log(r / (1 + (1 + r^2)^(1/2))):

    I_nu(nu r) ~ exp(nu eta) / ((2 pi nu)^(1/2) (1 + r^2)^(1/4)) * sum_k U_k(s) / nu^k

Writing R = (nu^2 + kappa^2)^(1/2) and t = 1/R (so s = nu t and nu (1 + r^2)^(1/2) = R) gives

    log C_p(kappa) ~ nu log(nu + R) - R + (1/2) log R - ((p - 1)/2) log(2 pi) - log S(t)
    S(t) = sum_{k < terms} U_k(s) / nu^k = sum_k sum_j c_kj nu^(j-k) t^j

where U_k(s) = sum_j c_kj s^j (j runs from k to 3k). In this form nothing divides by nu and the
nu log kappa terms cancel analytically: at nu = 0 it is Hankel's large-argument expansion, and
the truncation error is about max_s |U_terms(s) / s^terms| / R^terms, small once R is large.

Paths (all arithmetic in float64; kappa is one value per prototype, [K], so this is cheap):
- dim >= EXPANSION_MIN_DIM: the expansion with `terms` polynomials for every kappa. Its worst
  error (at kappa -> 0, s -> 1) is about max_s |U_terms(s)| / nu^terms: with terms = 1 it is
  5.6e-3 at p = 32, 2.7e-3 at p = 64, 6.6e-4 at p = 256; with terms = 4 it is 3.9e-7 at p = 32
  and 2.1e-8 at p = 64 (docs/vmf_error.md). It grows as p falls (terms = 4: 1.3e-6 at p = 24,
  8e-6 at p = 16, 1.3e-2 at p = 4), so below p = 32 the exact path takes over.
- dim < EXPANSION_MIN_DIM: where R < SERIES_MAX_R the power series
      I_nu(kappa) = (kappa/2)^nu sum_k (kappa^2/4)^k / (k! Gamma(nu + k + 1)),
  summed in log space (all terms are positive, so there is no cancellation); elsewhere the
  expansion with all four polynomials, whose error there is below 1e-8 (7e-9 at R = 64).

Shapes: `kappa` is any shape; the result has the same shape.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import mpmath
import torch

from fastproto.value_checks import check_values

MAX_TERMS = 4
EXPANSION_MIN_DIM = 32
SERIES_MAX_R = 64.0
# Terms of the power series: for kappa < 64 the k-th term is below e^-37 of the largest from
# k = 72 on, so 96 terms reach float64 precision with room to spare.
SERIES_TERMS = 96
_LOG_2PI = math.log(2.0 * math.pi)

# Debye polynomials U_k(s) = sum_j c_kj s^j of DLMF 10.41.10, as (power j, coefficient c_kj).
_DEBYE_U: tuple[tuple[tuple[int, float], ...], ...] = (
    ((0, 1.0),),
    ((1, 3.0 / 24.0), (3, -5.0 / 24.0)),
    ((2, 81.0 / 1152.0), (4, -462.0 / 1152.0), (6, 385.0 / 1152.0)),
    (
        (3, 30375.0 / 414720.0),
        (5, -369603.0 / 414720.0),
        (7, 765765.0 / 414720.0),
        (9, -425425.0 / 414720.0),
    ),
)


def debye_polynomial(k: int) -> tuple[tuple[int, float], ...]:
    """U_k(s) as ((power, coefficient), ...), k in 0..3 (DLMF 10.41.10)."""
    return _DEBYE_U[k]


def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool):
        raise ValueError(f"dim must be an integer >= 2 (the sphere lives in R^dim), got {dim!r}")
    try:
        p = operator.index(dim)
    except TypeError:
        raise ValueError(
            f"dim must be an integer >= 2 (the sphere lives in R^dim), got {dim!r}; "
            "pass the embedding size, e.g. 256 for the bottleneck"
        ) from None
    if p < 2:
        raise ValueError(f"dim must be >= 2 (the sphere lives in R^dim), got {p}")
    return p


def _check_terms(terms: Any) -> None:
    if isinstance(terms, bool) or not isinstance(terms, int) or not 1 <= terms <= MAX_TERMS:
        raise ValueError(
            f"terms must be an integer in 1..{MAX_TERMS} (how many U_k(s) polynomials of the "
            f"expansion to use; 1 is the DINO-vMF choice), got {terms!r}"
        )


def _check_kappa(kappa: Any) -> None:
    if not isinstance(kappa, torch.Tensor):
        raise ValueError(f"kappa must be a torch.Tensor, got {type(kappa).__name__}")
    if kappa.is_complex():
        raise ValueError(f"kappa must be real, got dtype {kappa.dtype}")
    # One device sync on the good path (so on a GPU only in debug mode, see value_checks); the
    # counts are only computed to word the error.
    if not check_values(kappa) or bool((kappa > 0).logical_and(torch.isfinite(kappa)).all()):
        return
    nan = int(torch.isnan(kappa).sum())
    nonpositive = int((kappa <= 0).sum())
    infinite = int(torch.isinf(kappa).sum())
    raise ValueError(
        f"kappa must be finite and > 0, found {nan} NaN, {nonpositive} non-positive and "
        f"{infinite} infinite values; kappa = ||w|| / tau, so check for zero or non-finite "
        "prototypes and a positive temperature"
    )


def _expansion_coefficients(nu: float, terms: int) -> list[float]:
    """d_j with S(t) = sum_j d_j t^j = sum_{k < terms} U_k(nu t) / nu^k (0.0 ** 0 == 1.0)."""
    coeffs = [0.0] * (3 * (terms - 1) + 1)
    for k in range(terms):
        for power, c in _DEBYE_U[k]:
            coeffs[power] += c * nu ** (power - k)
    return coeffs


def _log_c_expansion(kappa: torch.Tensor, dim: int, terms: int) -> torch.Tensor:
    """log C_p from the uniform expansion in the R-form of the module docstring."""
    nu = dim / 2.0 - 1.0
    # R = sqrt(nu^2 + kappa^2) >= nu; nu filled on the device (new_tensor would copy from the host)
    big_r = torch.hypot(kappa, kappa.new_full((), nu))
    t = big_r.reciprocal()
    coeffs = _expansion_coefficients(nu, terms)
    s_sum = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):  # Horner in t
        s_sum = s_sum * t + c
    log_scale = nu * torch.log(nu + big_r) - big_r + 0.5 * torch.log(big_r)
    return log_scale - 0.5 * (dim - 1) * _LOG_2PI - torch.log(s_sum)


def _log_c_series(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C_p from the power series of I_nu, exact for moderate kappa (here R < 64)."""
    nu = dim / 2.0 - 1.0
    k = torch.arange(SERIES_TERMS, dtype=kappa.dtype, device=kappa.device)  # [T]
    constant = -torch.lgamma(k + 1.0) - torch.lgamma(k + nu + 1.0)  # [T]
    log_terms = 2.0 * k * torch.log(kappa / 2.0).unsqueeze(-1) + constant  # [..., T]
    # log I_nu = nu log(kappa/2) + lse; the nu log kappa cancels against C_p's numerator.
    return nu * math.log(2.0) - 0.5 * dim * _LOG_2PI - torch.logsumexp(log_terms, dim=-1)


def _log_c_small_dim(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact path for dim < EXPANSION_MIN_DIM: series where R < SERIES_MAX_R, else 4 terms."""
    nu = dim / 2.0 - 1.0
    use_series = kappa * kappa + nu * nu < SERIES_MAX_R**2
    # Each branch sees only inputs in its own region, so the unused one stays finite and
    # its zero gradient does not turn into NaN.
    series_in = torch.where(use_series, kappa, 0.5 * SERIES_MAX_R)
    expansion_in = torch.where(use_series, SERIES_MAX_R, kappa)
    series = _log_c_series(series_in, dim)
    expansion = _log_c_expansion(expansion_in, dim, MAX_TERMS)
    return torch.where(use_series, series, expansion)


def log_normalizer(kappa: torch.Tensor, dim: int, terms: int = 1) -> torch.Tensor:
    """log C_p(kappa) for p = `dim`, elementwise over `kappa` (any shape), differentiable.

    `terms` (1..4) is how many U_k polynomials the expansion uses for dim >= 32; smaller dims
    use the exact path whatever `terms` is. Computed in float64 and returned in kappa's dtype
    (float32 for half-precision or integer input: log C_p reaches -1e5, past float16's range).
    """
    p = _check_dim(dim)
    _check_terms(terms)
    _check_kappa(kappa)
    out_dtype = torch.promote_types(kappa.dtype, torch.float32)
    work = kappa.to(torch.float64)
    if p >= EXPANSION_MIN_DIM:
        return _log_c_expansion(work, p, terms).to(out_dtype)
    return _log_c_small_dim(work, p).to(out_dtype)


def _log_bessel_i_integral(nu: mpmath.mpf, z: mpmath.mpf) -> mpmath.mpf:
    """log I_nu(z), nu >= 1, from the positive integral DLMF 10.32.2 split around its peak.

    I_nu(z) = (z/2)^nu / (pi^(1/2) Gamma(nu + 1/2)) int_{-1}^{1} (1 - u^2)^(nu - 1/2) e^(z u) du
    """
    half = mpmath.mpf(1) / 2
    a = 2 * nu - 1
    peak = (-a + mpmath.sqrt(a * a + 4 * z * z)) / (2 * z)  # zero of the log-integrand's slope

    def log_integrand(u: mpmath.mpf) -> mpmath.mpf:
        return (nu - half) * mpmath.log(1 - u * u) + z * u

    top = log_integrand(peak)
    width = (1 - peak * peak) / mpmath.sqrt(a * (1 + peak * peak))
    points = [mpmath.mpf(-1)]
    for m in (-40, -8, -2, 0, 2, 8, 40):
        u = peak + m * width
        if points[-1] < u < 1:
            points.append(u)
    points.append(mpmath.mpf(1))
    area = mpmath.quad(lambda u: mpmath.exp(log_integrand(u) - top), points)
    prefactor = nu * mpmath.log(z / 2) - mpmath.log(mpmath.sqrt(mpmath.pi))
    return prefactor - mpmath.loggamma(nu + half) + top + mpmath.log(area)


def log_bessel_i_mp(nu: float, z: float) -> mpmath.mpf:
    """log I_nu(z) to the working precision of mpmath (call inside mpmath.workdps)."""
    nu_mp, z_mp = mpmath.mpf(nu), mpmath.mpf(z)
    try:
        # The hypergeometric series is fast except for large nu and large z together.
        return mpmath.log(mpmath.besseli(nu_mp, z_mp, maxterms=3000))
    except mpmath.libmp.NoConvergence:
        if nu < 1:
            raise
        return _log_bessel_i_integral(nu_mp, z_mp)


def log_normalizer_exact(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C_p(kappa) in float64 from mpmath at 40 digits, for validation (slow, no grad)."""
    p = _check_dim(dim)
    _check_kappa(kappa)
    nu = p / 2.0 - 1.0
    values = kappa.detach().to(device="cpu", dtype=torch.float64).reshape(-1).tolist()
    out = []
    with mpmath.workdps(40):
        for z in values:
            log_i = log_bessel_i_mp(nu, z)
            log_c = nu * mpmath.log(z) - p * mpmath.log(2 * mpmath.pi) / 2 - log_i
            out.append(float(log_c))
    result = torch.tensor(out, dtype=torch.float64).reshape(kappa.shape)
    return result.to(kappa.device)
