"""Online EM of a vMF mixture (fastproto/prototype_em.py) against references written from the
definitions: the exact maximum-likelihood kappa (A_p(kappa) = rbar solved with scipy's Bessel
functions), a batch EM written as plain float64 loops, and synthetic mixtures drawn with Wood's
(1994) sampler. scipy is imported inside the tests that need it (the GPU tier collects without).
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from fastproto.kernels.reference import teacher_logits

from fastproto.prototype_em import (
    OnlineVMFMixture,
    approximate_concentration,
    resultant_for_concentration,
)

# --- references, written from the definitions --------------------------------------------------


def mean_resultant(dim: int, kappa: float) -> float:
    """A_p(kappa) = I_{p/2}(kappa) / I_{p/2-1}(kappa), the mean of <mu, y> under vMF(mu, kappa)."""
    from scipy.special import ive

    return float(ive(dim / 2.0, kappa) / ive(dim / 2.0 - 1.0, kappa))


def exact_concentration(rbar: float, dim: int) -> float:
    """The maximum-likelihood kappa: the root of A_p(kappa) = rbar, in float64."""
    from scipy.optimize import brentq

    guess = rbar * (dim - rbar * rbar) / (1.0 - rbar * rbar)  # only to bracket the root
    return float(
        brentq(lambda k: mean_resultant(dim, k) - rbar, 0.5 * guess, 2.0 * guess, rtol=1e-15)
    )


def log_c(dim: int, kappa: float) -> float:
    """log C_p(kappa) = nu log kappa - (p/2) log(2 pi) - log I_nu(kappa), nu = p/2 - 1."""
    from scipy.special import ive

    nu = dim / 2.0 - 1.0
    log_i = math.log(float(ive(nu, kappa))) + kappa  # ive = I e^-kappa
    return nu * math.log(kappa) - 0.5 * dim * math.log(2.0 * math.pi) - log_i


def sample_vmf(mu: np.ndarray, kappa: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws [n, p] from vMF(mu, kappa) by Wood (1994): w = <mu, y> by rejection, then a
    uniform direction orthogonal to mu."""
    p = mu.shape[0]
    b = (-2.0 * kappa + math.sqrt(4.0 * kappa**2 + (p - 1.0) ** 2)) / (p - 1.0)
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + (p - 1.0) * math.log(1.0 - x0 * x0)
    w = np.empty(0)
    while w.size < n:
        z = rng.beta((p - 1.0) / 2.0, (p - 1.0) / 2.0, size=2 * n)
        cand = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        ok = kappa * cand + (p - 1.0) * np.log(1.0 - x0 * cand) - c >= np.log(rng.random(2 * n))
        w = np.concatenate([w, cand[ok]])
    w = w[:n, None]
    v = rng.standard_normal((n, p))
    v -= (v @ mu)[:, None] * mu[None, :]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w * mu[None, :] + np.sqrt(1.0 - w * w) * v


def sample_mixture(
    means: np.ndarray, kappas: list[float], n: int, rng: np.random.Generator
) -> torch.Tensor:
    """n rows [n, p] of the equal-weight mixture, in a random order, as float64."""
    labels = rng.integers(0, len(kappas), size=n)
    out = np.empty((n, means.shape[1]))
    for k, kappa in enumerate(kappas):
        rows = labels == k
        out[rows] = sample_vmf(means[k], kappa, int(rows.sum()), rng)
    return torch.from_numpy(out)


def batch_em_step(
    data: np.ndarray, mu: np.ndarray, kappa: np.ndarray, center: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One batch EM step as plain loops: r[n, k] = softmax_k(kappa_k <mu_k, y_n> + log C_p(kappa_k)
    - center_k), m_k = sum_n r, s_k = sum_n r y_n, mu = s / ||s||, kappa = Banerjee(||s|| / m)."""
    n_rows, p = data.shape
    k_comp = mu.shape[0]
    bias = [log_c(p, float(kappa[k])) - float(center[k]) for k in range(k_comp)]
    mass = [0.0] * k_comp
    sums = [[0.0] * p for _ in range(k_comp)]
    for n in range(n_rows):
        y = data[n].tolist()
        logits = [
            float(kappa[k]) * sum(a * b for a, b in zip(mu[k].tolist(), y, strict=True)) + bias[k]
            for k in range(k_comp)
        ]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        for k in range(k_comp):
            r = weights[k] / total
            mass[k] += r
            for d in range(p):
                sums[k][d] += r * y[d]
    new_mu, new_kappa = np.empty_like(mu), np.empty_like(kappa)
    for k in range(k_comp):
        length = math.sqrt(sum(v * v for v in sums[k]))
        rbar = length / mass[k]
        new_mu[k] = [v / length for v in sums[k]]
        new_kappa[k] = rbar * (p - rbar * rbar) / (1.0 - rbar * rbar)
    return new_mu, new_kappa


def orthonormal_rows(k: int, p: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((p, k)))
    return q.T.copy()  # [k, p]


def perturbed(means: np.ndarray, scale: float, rng: np.random.Generator) -> torch.Tensor:
    """Unit rows near `means` (cosine about 1 / sqrt(1 + scale^2))."""
    noise = rng.standard_normal(means.shape) / math.sqrt(means.shape[1])
    return F.normalize(torch.from_numpy(means + scale * noise), dim=1)


def mixture(k: int, p: int, **kwargs: object) -> OnlineVMFMixture:
    return OnlineVMFMixture(k, p, **kwargs).double()  # type: ignore[arg-type]


def state(model: OnlineVMFMixture) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


# --- Banerjee's approximation ------------------------------------------------------------------

RBARS = (0.01, 0.05, 0.2, 0.4, 0.6, 0.65, 0.8, 0.9, 0.95, 0.99, 0.999)


@pytest.mark.parametrize("dim", [2, 3, 8, 12, 16, 64, 256])
def test_banerjee_kappa_is_within_its_known_error_of_the_exact_ml_kappa(dim: int) -> None:
    # Banerjee's formula matches the exact root to first order at both ends (kappa ~ p rbar as
    # rbar -> 0, kappa ~ (p - 1) / (2 (1 - rbar)) as rbar -> 1) and overestimates in between. On
    # a dense grid its largest relative error is 0.065 at p = 2, 0.0206 at p = 8, 0.0105 at
    # p = 16 and 0.00067 at p = 256, near rbar = 0.65-0.87: p times it rises to 0.1714 as p
    # grows. Hence the band [0, 0.18 / p]; a formula off by one in p (kappa ~ (p - 1) rbar near
    # 0) has relative error -1/p and falls outside it.
    rbar = torch.tensor(RBARS, dtype=torch.float64)
    got = approximate_concentration(rbar, dim)
    exact = torch.tensor([exact_concentration(r, dim) for r in RBARS], dtype=torch.float64)
    relative = got / exact - 1.0
    assert bool((relative >= -1e-9).all()), relative
    assert bool((relative <= 0.18 / dim).all()), relative * dim
    # small rbar is the exact end: the error there is second order in rbar
    assert abs(float(relative[0])) < 1e-4


def test_inverse_of_the_approximation_round_trips() -> None:
    for dim in (2, 12, 256):
        kappa = torch.tensor([1e-6, 0.3, 5.0, 60.0, 1e3, 1e5], dtype=torch.float64)
        rbar = resultant_for_concentration(kappa, dim)
        assert bool(((rbar >= 0) & (rbar < 1)).all())
        back = approximate_concentration(rbar, dim)
        torch.testing.assert_close(back, kappa, rtol=1e-9, atol=0)


# --- recovery of a synthetic mixture -----------------------------------------------------------

TRUE_KAPPAS = [20.0, 30.0, 40.0, 50.0, 65.0, 80.0]


def test_streaming_recovers_a_well_separated_vmf_mixture() -> None:
    k, p, rows, steps, alpha = len(TRUE_KAPPAS), 12, 240, 150, 0.95
    rng = np.random.default_rng(7)
    means = orthonormal_rows(k, p, rng)  # [K, p], cosine 0 between components
    order = rng.permutation(k)  # the estimator does not get the true order
    model = mixture(k, p, forgetting=alpha, init_kappa=5.0)
    model.initialize(perturbed(means[order], 0.75, rng))  # cosine about 0.8 with the truth
    for _ in range(steps):
        model.update(sample_mixture(means, TRUE_KAPPAS, rows, rng))
    cosine = torch.from_numpy(means) @ model.direction.T  # [true K, estimated K]
    match = cosine.argmax(dim=1)
    assert sorted(match.tolist()) == list(range(k)), cosine
    # Statistics: about rows / K = 40 rows per component per step, forgotten by alpha, give an
    # effective sample size n = 40 (1 + alpha) / (1 - alpha) = 1560 (the start weighs
    # alpha^150 < 5e-4 by now). With A = A_p(kappa) and v = Var<mu, y> = 1 - A^2 - (p - 1) A /
    # kappa = A'(kappa): the direction error is 1 - cos ~ chi2_{p-1} / (2 n kappa A), bounded by
    # the 0.9999 quantile 37.4 of chi2_11; rbar has standard deviation sqrt(v / n), so kappa has
    # relative standard deviation 1 / (kappa sqrt(v n)), allowed 4 of them, plus Banerjee's
    # bias 0.18 / p.
    ess = rows / k * (1 + alpha) / (1 - alpha)
    for true_k, est_k in enumerate(match.tolist()):
        kappa = TRUE_KAPPAS[true_k]
        a = mean_resultant(p, kappa)
        v = 1.0 - a * a - (p - 1) * a / kappa
        assert 1.0 - float(cosine[true_k, est_k]) < 37.4 / (2 * ess * kappa * a)
        relative = float(model.kappa[est_k]) / kappa - 1.0
        assert abs(relative) < 0.18 / p + 4.0 / (kappa * math.sqrt(v * ess)), (kappa, relative)


# --- agreement with batch EM -------------------------------------------------------------------


def _em_problem() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Data [200, 8] from 4 overlapping components and a start [4, 8] with kappa 8."""
    rng = np.random.default_rng(3)
    means = F.normalize(torch.from_numpy(orthonormal_rows(4, 8, rng)) + 0.3, dim=1).numpy()
    data = sample_mixture(means, [6.0, 10.0, 15.0, 25.0], 200, rng)
    return data, perturbed(means, 0.6, rng), 8.0


def test_one_full_batch_update_equals_one_batch_em_step() -> None:
    data, start, kappa0 = _em_problem()
    center = torch.tensor([0.3, -0.2, 0.0, 0.5], dtype=torch.float64)
    for centre in (None, center):
        model = mixture(4, 8, forgetting=1.0, prior_mass=0.0, min_mass=1e-9, init_kappa=kappa0)
        model.initialize(start)
        model.update(data, center=centre)
        c = np.zeros(4) if centre is None else centre.numpy()
        mu, kappa = batch_em_step(data.numpy(), start.numpy(), np.full(4, kappa0), c)
        # float64 throughout; log C_p from vmf.py's series and from scipy agree to ~1e-14
        torch.testing.assert_close(model.direction, torch.from_numpy(mu), rtol=0, atol=1e-12)
        torch.testing.assert_close(model.kappa, torch.from_numpy(kappa), rtol=1e-11, atol=0)


def test_fixed_concentration_fits_the_directions_and_holds_kappa() -> None:
    """fit_concentration=False: the directions are batch EM's (its E-step uses the held kappa,
    so the same batch_em_step gives them) and every kappa stays init_kappa."""
    data, directions, kappa0 = _em_problem()
    for _ in range(3):  # three EM iterations, each a whole-batch update from the last directions
        model = mixture(
            4,
            8,
            forgetting=1.0,
            prior_mass=0.0,
            min_mass=1e-9,
            init_kappa=kappa0,
            fit_concentration=False,
        )
        model.initialize(directions)
        mu, fitted = batch_em_step(
            data.numpy(), directions.numpy(), np.full(4, kappa0), np.zeros(4)
        )
        model.update(data)
        torch.testing.assert_close(model.direction, torch.from_numpy(mu), rtol=0, atol=1e-12)
        assert torch.all(model.kappa == kappa0)
        assert not np.allclose(fitted, kappa0)  # a fitted kappa would have moved
        directions = model.direction.clone()


def test_online_fixed_point_is_the_batch_em_fixed_point() -> None:
    # s* = S(theta*) / (1 - alpha) and m* = M(theta*) / (1 - alpha) share theta*: mu and rbar are
    # ratios. Both iterations contract to it geometrically; once each moves by less than 1e-12
    # per pass the two must agree to about that over (1 - contraction rate): 1e-8 is ample. A
    # bug that forgot only one of m, s would move the fixed point's kappa by a factor.
    data, start, kappa0 = _em_problem()
    mu, kappa = start.numpy(), np.full(4, kappa0)
    for _ in range(200):
        new_mu, new_kappa = batch_em_step(data.numpy(), mu, kappa, np.zeros(4))
        change = max(np.abs(new_mu - mu).max(), np.abs(new_kappa / kappa - 1).max())
        mu, kappa = new_mu, new_kappa
        if change < 1e-12:
            break
    assert change < 1e-12, "batch EM did not converge"
    model = mixture(4, 8, forgetting=0.5, init_kappa=kappa0)
    model.initialize(start)
    for _ in range(600):
        before = model.kappa.clone()
        model.update(data)
        moved = float((model.kappa / before - 1).abs().max())
        if moved < 1e-13:
            break
    assert moved < 1e-13, "online EM did not converge"
    torch.testing.assert_close(model.direction, torch.from_numpy(mu), rtol=0, atol=1e-8)
    torch.testing.assert_close(model.kappa, torch.from_numpy(kappa), rtol=1e-8, atol=0)


# --- the statistics: the loss's teacher softmax, chunked ---------------------------------------


def _small_problem(rows: int = 30) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(11)
    means = orthonormal_rows(3, 8, rng)
    data = sample_mixture(means, [15.0, 25.0, 40.0], rows, rng)
    center = torch.from_numpy(rng.normal(scale=0.5, size=5))
    return data, center, means


def test_statistics_are_column_sums_and_r_t_y_of_the_teacher_softmax() -> None:
    data, center, _ = _small_problem()
    torch.manual_seed(1)
    model = mixture(5, 8, init_kappa=12.0, tau=0.05)
    model.initialize(F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1))
    protos = model.prototypes()
    torch.testing.assert_close(protos.norm(dim=1) / 0.05, model.kappa, rtol=1e-12, atol=0)
    # the loss's own teacher logits, materialised
    resp = torch.softmax(teacher_logits(data, protos, center, 0.05, True), dim=1)  # [N, K]
    mass, sums = model.responsibility_statistics(data, center)
    torch.testing.assert_close(mass, resp.sum(dim=0), rtol=0, atol=1e-12)
    torch.testing.assert_close(sums, resp.T @ data, rtol=0, atol=1e-12)


def test_block_size_does_not_change_the_statistics_or_the_update() -> None:
    data, center, _ = _small_problem(rows=30)
    results = {}
    for block in (1, 2, 5, None):  # blocks of 2 leave a partial one at K = 5
        torch.manual_seed(2)
        model = mixture(5, 8, forgetting=0.7, init_kappa=10.0)
        stats = model.responsibility_statistics(data, center, block=block)
        model.update(data, center=center, block=block)
        results[block] = (stats, state(model))
    (mass, sums), whole = results[5]
    assert float(mass.sum()) == pytest.approx(30.0, abs=1e-12)
    for block in (1, 2, None):
        (m, s), st = results[block]
        torch.testing.assert_close(m, mass, rtol=0, atol=1e-12)
        torch.testing.assert_close(s, sums, rtol=0, atol=1e-12)
        assert_same_state(st, whole, atol=1e-12)


# --- determinism and resume --------------------------------------------------------------------


def _reseeding_run(seed: int, steps: int = 3) -> OnlineVMFMixture:
    """Random starts against data in 3 clusters: several components die and are re-seeded."""
    torch.manual_seed(seed)
    model = OnlineVMFMixture(8, 8, forgetting=0.8, dead_policy="reseed")  # float32 state
    rng = np.random.default_rng(seed)
    means = orthonormal_rows(3, 8, rng)
    for _ in range(steps):
        model.update(sample_mixture(means, [30.0, 30.0, 30.0], 40, rng).float())
    return model


def test_same_seed_gives_the_same_state() -> None:
    a, b = state(_reseeding_run(4)), state(_reseeding_run(4))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    other = state(_reseeding_run(5))
    assert not torch.equal(a["direction"], other["direction"])


def test_state_dict_round_trip_resumes_exactly() -> None:
    first = _reseeding_run(4)
    torch.manual_seed(99)  # another start, overwritten by the load
    second = OnlineVMFMixture(8, 8, forgetting=0.8, dead_policy="reseed")
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.prototypes(), first.prototypes())
    batch = F.normalize(torch.randn(40, 8), dim=1)
    batch[:, 0] += 4.0  # far from most components, so some die and the draws are used
    batch = F.normalize(batch, dim=1)
    for model in (first, second):
        torch.manual_seed(123)
        model.update(batch)
    a, b = state(first), state(second)
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- dead components ---------------------------------------------------------------------------


def _dead_component_runs(policy: str, steps: int) -> tuple[OnlineVMFMixture, list[torch.Tensor]]:
    """Three components on three clusters (e1, e2, e3 in R^8) and a fourth where no data lies."""
    rng = np.random.default_rng(5)
    means = np.eye(8)[:3]
    starts = torch.from_numpy(np.vstack([means, -means.sum(axis=0) / math.sqrt(3.0)]))
    torch.manual_seed(0)
    model = mixture(4, 8, forgetting=0.9, dead_policy=policy, init_kappa=40.0)
    model.initialize(starts)
    batches = [sample_mixture(means, [40.0, 40.0, 40.0], 90, rng) for _ in range(steps)]
    for batch in batches:
        model.update(batch)
    return model, batches


def test_keep_leaves_a_dead_component_as_it_is() -> None:
    model, _ = _dead_component_runs("keep", steps=4)
    start = -torch.ones(3, dtype=torch.float64) / math.sqrt(3.0)
    assert torch.equal(model.direction[3, :3], start)
    assert torch.equal(model.direction[3, 3:], torch.zeros(5, dtype=torch.float64))
    assert float(model.kappa[3]) == 40.0
    assert bool(model.dead()[3]) and not bool(model.dead()[:3].any())
    assert float(model.mass[3]) < 0.9**4 + 1e-6  # the prior mass, forgotten; no data arrived


def test_reseed_moves_a_dead_component_onto_the_batch() -> None:
    kept, _ = _dead_component_runs("keep", steps=1)
    model, (batch,) = _dead_component_runs("reseed", steps=1)
    cosine = model.direction[3] @ batch.T  # [N]: with the batch's unit rows
    assert float(cosine.max()) == pytest.approx(1.0, abs=1e-12)
    assert float(model.kappa[3]) == float(model.kappa[:3].median())  # the live ones' median
    assert not bool(model.dead()[3])
    # only the dead component moves
    torch.testing.assert_close(model.direction[:3], kept.direction[:3], rtol=0, atol=0)
    torch.testing.assert_close(model.kappa[:3], kept.kappa[:3], rtol=0, atol=0)
    later, _ = _dead_component_runs("reseed", steps=4)
    assert float((later.direction[3, :3]).max()) > 0.5  # still among the data, not the void


def _refill_runs(policy: str, steps: int, per_step: int = 1) -> tuple[OnlineVMFMixture, list]:
    """Components on the clusters e1, e2, e3 of R^8 and three more where no data lies, against
    data that also holds a fourth cluster, e5, which no component covers."""
    rng = np.random.default_rng(8)
    eye = np.eye(8)
    # three directions at cosine about -0.5 to every cluster, e5 included: no row comes near
    void = -eye[[0, 1, 2, 4]].sum(axis=0)[None, :] + 0.3 * eye[5:8]  # [3, 8]
    starts = np.vstack([eye[:3], void / np.linalg.norm(void, axis=1, keepdims=True)])
    model = mixture(6, 8, forgetting=0.9, dead_policy=policy, init_kappa=40.0)
    model.refill_per_step = per_step
    model.initialize(torch.from_numpy(starts))
    batches = [sample_mixture(eye[[0, 1, 2, 4]], [40.0] * 4, 120, rng) for _ in range(steps)]
    for batch in batches:
        model.update(batch)
    return model, batches


def test_refill_moves_the_least_massive_dead_components_onto_the_worst_covered_rows() -> None:
    kept, _ = _refill_runs("keep", steps=1)
    model, (batch,) = _refill_runs("refill", steps=1, per_step=1)
    dead_before = kept.dead()  # [K]: the three void components, none of the cluster ones
    assert dead_before.tolist() == [False, False, False, True, True, True]
    moved = (model.direction != kept.direction).any(dim=1)  # [K]
    assert int(moved.sum()) == 1  # at most refill_per_step a step
    index = int(moved.nonzero())
    masses = kept.mass[dead_before]
    assert float(kept.mass[index]) == float(masses.min())  # the least massive dead one
    cosine = model.direction[index] @ batch.T  # [N]: it sits on one of the batch's rows
    assert float(cosine.max()) == pytest.approx(1.0, abs=1e-12)
    assert float(model.direction[index, 4]) > 0.8  # in the uncovered e5 cluster
    assert float(model.mass[index]) == model.min_mass
    assert not bool(model.dead()[index])
    keep = ~moved  # the others, live and dead, are as "keep" left them
    torch.testing.assert_close(model.direction[keep], kept.direction[keep], rtol=0, atol=0)
    two, (batch,) = _refill_runs("refill", steps=1, per_step=2)
    moved = (two.direction != kept.direction).any(dim=1)
    assert int(moved.sum()) == 2
    a, b = two.direction[moved]
    assert float(a @ b) < 1.0 - 1e-6  # two different rows
    later, _ = _refill_runs("refill", steps=5, per_step=1)
    covers_e5 = later.direction[~later.dead(), 4].max()
    assert float(covers_e5) > 0.9  # the refilled component lives on the e5 cluster


# --- DDP: two gloo ranks against one process ---------------------------------------------------

SPLITS = ((70, 50), (40, 0), (33, 31))  # uneven, and a step where rank 1 has no rows


def _ddp_batches() -> tuple[list[torch.Tensor], torch.Tensor]:
    rng = np.random.default_rng(21)
    means = orthonormal_rows(3, 8, rng)
    batches = [sample_mixture(means, [15.0, 25.0, 40.0], sum(s), rng) for s in SPLITS]
    return batches, torch.from_numpy(rng.normal(scale=0.3, size=5))


def _ddp_run(rank: int | None) -> dict[str, torch.Tensor]:
    batches, center = _ddp_batches()
    torch.manual_seed(0)
    model = mixture(5, 8, forgetting=0.8, init_kappa=10.0)
    for batch, split in zip(batches, SPLITS, strict=True):
        if rank is not None:
            batch = batch.split(list(split))[rank]
        model.update(batch, center=center)
    return state(model)


def _ddp_reseed_run(rank: int, policy: str = "reseed") -> dict[str, torch.Tensor]:
    batches, _ = _ddp_batches()
    torch.manual_seed(0)  # the same start on both ranks, as DDP runs have
    model = mixture(5, 8, forgetting=0.8, dead_policy=policy)
    torch.manual_seed(rank)  # different generators: the broadcast must keep the ranks equal
    model.update(batches[0].split(list(SPLITS[0]))[rank])
    return state(model)


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(_ddp_run(rank), f"{folder}/keep{rank}.pt")
        torch.save(_ddp_reseed_run(rank), f"{folder}/reseed{rank}.pt")
        torch.save(_ddp_reseed_run(rank, "refill"), f"{folder}/refill{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_gloo_ranks_on_halves_equal_one_process_on_the_whole(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    whole = _ddp_run(None)
    for rank in range(2):
        # the same sums, added in another order: float64 rounding only
        assert_same_state(torch.load(tmp_path / f"keep{rank}.pt"), whole, atol=1e-12)
    rank0_rows, rank1_rows = _ddp_batches()[0][0].split(list(SPLITS[0]))
    for policy in ("reseed", "refill"):
        moved_states = [torch.load(tmp_path / f"{policy}{rank}.pt") for rank in range(2)]
        for name in moved_states[0]:
            assert torch.equal(moved_states[0][name], moved_states[1][name]), (policy, name)
        moved = moved_states[0]["mass"] == 1.0  # moved components hold exactly min_mass
        assert bool(moved.any()), policy
        dirs = moved_states[0]["direction"][moved]
        on_rank0 = (dirs @ rank0_rows.T).max(dim=1).values
        assert float(on_rank0.min()) == pytest.approx(1.0, abs=1e-12), policy
        assert float((dirs @ rank1_rows.T).max()) < 1.0 - 1e-6, policy


# --- empty batches and input validation --------------------------------------------------------


def test_an_empty_global_batch_changes_nothing() -> None:
    data, center, _ = _small_problem()
    model = mixture(5, 8, forgetting=0.5)
    model.update(data, center=center)
    before = state(model)
    model.update(data[:0], center=center)
    model.update_from_statistics(torch.zeros(5), torch.zeros(5, 8), rows=0)
    after = state(model)
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_bad_input_is_refused_with_a_hint() -> None:
    data, center, _ = _small_problem()
    for forgetting in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"forgetting must lie in \(0, 1\]"):
            OnlineVMFMixture(5, 8, forgetting=forgetting)
    with pytest.raises(ValueError, match="dead_policy"):
        OnlineVMFMixture(5, 8, dead_policy="drop")
    with pytest.raises(ValueError, match="tau must be > 0"):
        OnlineVMFMixture(5, 8, tau=0.0)
    model = mixture(5, 8)
    with pytest.raises(ValueError, match="L2-normalised"):
        model.update(2.0 * data)
    with pytest.raises(ValueError, match=r"\[N, D=8\]"):
        model.update(data[:, :7])
    with pytest.raises(ValueError, match=r"center must be \[K=5\]"):
        model.update(data, center=center[:4])
    mass, sums = model.responsibility_statistics(data)
    with pytest.raises(ValueError, match="means \\* rows"):
        model.update_from_statistics(mass / data.shape[0], sums, rows=data.shape[0])
    with pytest.raises(ValueError, match="unit-norm"):
        model.update_from_statistics(mass, 2.0 * sums, rows=data.shape[0])
    with pytest.raises(ValueError, match=r"\[K=5, D=8\]"):
        model.update_from_statistics(mass, sums[:, :7], rows=data.shape[0])
    for policy in ("reseed", "refill"):
        moving = mixture(5, 8, dead_policy=policy)
        with pytest.raises(ValueError, match="needs seeds"):
            moving.update_from_statistics(mass, sums, rows=data.shape[0])
    with pytest.raises(ValueError, match="refill_per_step must be an integer >= 1"):
        OnlineVMFMixture(5, 8, refill_per_step=0)


def test_float32_state_takes_bfloat16_embeddings() -> None:
    torch.manual_seed(3)
    y = F.normalize(torch.randn(64, 256), dim=1).bfloat16()  # norms off by up to ~2^-9
    model = OnlineVMFMixture(16, 256)
    mass, sums = model.responsibility_statistics(y)
    ref_mass, ref_sums = model.responsibility_statistics(y.float())
    assert mass.dtype == torch.float32
    assert torch.equal(mass, ref_mass) and torch.equal(sums, ref_sums)
    model.update(y)
    assert bool(torch.isfinite(model.prototypes()).all())
