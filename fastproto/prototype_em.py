"""Prototypes estimated by online EM of a von Mises-Fisher mixture (`head.prototypes = "em"`).

Instead of learning W [K, D] by the loss's gradient, W is the maximum-likelihood fit of a
K-component vMF mixture to the teacher's L2-normalised bottleneck embeddings, refitted after
every step by online EM (the decoupled prototype estimation of "Why Prototypes Collapse",
Arteaga et al., ICLR 2026, here in the vMF form of the DINO-vMF paper).

Shapes: embeddings y [N, D] with ||y_n|| = 1, K components, center [K] (optional).

E-step. Responsibilities are the teacher's own softmax, with the vMF log-normaliser and an
optional centre (the same logits as `kernels.reference.teacher_logits(y, W, center, tau, True)`):

    b[n, k] = <W_k, y_n> / tau + log C_p(||W_k|| / tau) - center[k]
            = kappa_k <mu_k, y_n> + log C_p(kappa_k) - center[k]                     [N, K]
    r[n, k] = softmax_k(b[n, k])                                                       [N, K]

computed over K in blocks, so no tensor larger than [N, block] is formed, and reduced at once to
the batch's sufficient statistics: mass_batch = sum_n r[n, :] [K] (the column sums of the
teacher softmax) and sum_batch = r^T Y [K, D] (kernels.Responsibilities).

M-step with exponential forgetting (alpha = `forgetting` in (0, 1]):

    m_k <- alpha m_k + mass_batch[k]                                                    [K]
    s_k <- alpha s_k + sum_batch[k]                                                     [K, D]
    mu_k = s_k / ||s_k||,   rbar_k = ||s_k|| / m_k                                      [K, D], [K]
    kappa_k = rbar_k (p - rbar_k^2) / (1 - rbar_k^2)   (Banerjee et al. 2005, p = D)    [K]
    W_k = mu_k kappa_k tau,  so ||W_k|| / tau = kappa_k, the vMF head's convention       [K, D]

With alpha = 1 and the whole data set as one batch this is one step of batch EM; with alpha < 1
the statistics are an exponentially weighted sum over about 1 / (1 - alpha) steps. mu and rbar
are ratios of the statistics, so the fixed points do not depend on alpha. Banerjee's kappa
overestimates the exact maximum-likelihood solution of A_p(kappa) = rbar by a relative error
between 0 and about 0.17 / p (largest near rbar = 0.65, exact in both limits rbar -> 0 and 1),
0.07 % at p = 256: far below the sampling noise of rbar. kappa is clipped to
[KAPPA_FLOOR, max_kappa] (rbar = 1, a single direction, would give infinity).

Concentration. With `fit_concentration=False` the M-step fits the mean directions only and
every kappa_k stays as set (the trainer sets 1 / tau_t each step, so W has unit rows, as the vMF
head starts): an online spherical soft k-means at the teacher's temperature. The trainer's
default (`head.em_concentration = "fixed"`) is this form, because fitted concentrations run away
when the embeddings bunch up: the component that covers them sharpens, its log C_p term outbids
every other component and the teacher's target turns one-hot (docs/prototype_em.md).

Mixing weights. The logits carry no log pi_k, on purpose: DINO's teacher softmax has none (the
DINO-vMF paper, section 3.2 and appendix A.4: pi is taken uniform, and the centring divides by
the estimated pi rather than multiplying, to rebalance assignments), and a vMF prototype W_k has
no room for one (its bias is log C_p(||W_k|| / tau), fixed by its norm). The estimator is
therefore EM for a mixture with uniform weights; its E-step is exactly the loss's target
softmax, so statistics that the fused loss accumulates can be fed in unchanged. The estimated
weights m_k / sum_j m_j are reported by `log_mixing_weights` for collapse analysis only.

Feeding it from the fused loss. `update_from_statistics(mass_batch, sum_batch, rows)` is the
M-step alone; the trainer feeds it the statistics the CLS loss returns when called with
`estep=` (LossResult.responsibilities). The chunked loss forms them in its own two passes over
K: the uncentred softmax comes from the same logit tiles before the centre is subtracted, its
column sums are the mass (and probability centring's raw means), and the resultant r^T Y_t over
the *teacher* embeddings is one more [block, Nt] x [Nt, D] product per block next to the loss's
q^T Z (Z holds the paired *student* rows, which is not this statistic). The triton kernels have
no such product yet, so there the statistics take a teacher-only chunked sweep (`update` runs
the same sweep on its own). Every rank passes its own sums; they are all-reduced (summed, not
averaged) before folding in, so N processes reach the one-process state on the whole batch.
Each teacher row counts once (the statistics are unweighted), so mass_batch adds up to `rows`,
which is checked: it catches column means passed for column sums.

Dead components (mass m_k < min_mass after the fold): their mean direction would rest on less
than `min_mass` rows of responsibility, where rbar -> 1 and kappa diverges, so their parameters
are never refitted from such statistics. `dead_policy` then says what happens:

- "keep" (default): they stay as they are; the statistics keep folding in, and a component
  revives once its mass is back above `min_mass`. This is plain online EM with no heuristic, it
  needs nothing but the statistics (so the fused-loss path implements it fully). With fitted
  concentrations in the collapse regime "reseed" fared worse than "keep" (every component ended
  in one direction; docs/prototype_em.md).
- "reseed": each dead component is moved onto an embedding of the current batch (rows drawn
  with torch's default generator; under DDP rank 0 picks and broadcasts them, and every rank
  draws the same count of numbers, so the ranks stay identical), with kappa the median of the
  live components (competitive on its own seed row) and statistics of mass `min_mass` that
  refit to exactly that direction and kappa. In the collapse regime hundreds die at once and
  land on the few rows of one batch, where they merge (docs/prototype_em.md).
- "refill": at most `refill_per_step` dead components per step (those of least mass first) are
  moved onto the batch rows that the live components explain worst, picked farthest-first
  (fastproto.farthest_rows: each pick is the row least similar to every live direction and to
  the rows picked before it; rank 0 picks and broadcasts), placed as "reseed" places them. A
  bounded number of moves per step cannot pile the dead onto one batch, and the rows chosen are
  where the mixture fits worst rather than where it already has a component.

Sizing. In steady state a component that gets a share rho of the N rows of each step holds
m = rho N / (1 - alpha). A uniform share at K = 65536, N = 256 and alpha = 0.99 is m = 0.39,
below the default min_mass = 1: large K needs alpha closer to 1 (alpha >= 1 - N / (10 K) keeps
about 10 rows per component). The default alpha = 0.99 remembers about 100 steps, shorter than
the teacher's EMA horizon (1 / (1 - 0.996) = 250 steps), so the statistics describe embeddings of
a teacher not much older than the current one; the best value is to be measured.

Input. Embeddings must already be L2-normalised (the head's output); they are refused, not
normalised, when a row's norm is off by more than UNIT_TOLERANCE (a wiring error such as passing
the pre-normalisation bottleneck would otherwise go unnoticed). The tolerance admits bfloat16
rows. Value checks run on the CPU always and on a GPU with FASTPROTO_DEBUG=1 (value_checks).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fastproto.centering import _distributed
from fastproto.farthest_rows import farthest_rows
from fastproto.kernels.chunked import teacher_responsibilities_chunked
from fastproto.value_checks import check_values

DEAD_POLICIES = ("keep", "reseed", "refill")
DEFAULT_REFILL_PER_STEP = 4  # dead components "refill" moves per step
DEFAULT_FORGETTING = 0.99
DEFAULT_MIN_MASS = 1.0
DEFAULT_MAX_KAPPA = 1e5
# kappa = 0 (rbar = 0, a uniform component) has no finite log C_p; this floor is a component
# that is uniform to all intents (log C_p is flat below kappa ~ 1).
KAPPA_FLOOR = 1e-6
# |  ||y|| - 1 | allowed for an embedding: bfloat16 rounding of a normalised row stays below 2^-8.
UNIT_TOLERANCE = 1e-2
_BISECTION_STEPS = 64  # halves [0, 1) down to 2^-64, past float64's resolution


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


def approximate_concentration(rbar: Tensor, dim: int) -> Tensor:
    """Banerjee et al. (2005): kappa ~ rbar (p - rbar^2) / (1 - rbar^2), p = `dim`.

    Elementwise over rbar in [0, 1] (any shape), computed and returned in float64; rbar = 1
    gives infinity. Its relative error against the exact solution of A_p(kappa) = rbar lies in
    [0, 0.18 / p] (tests/test_prototype_em.py measures it).
    """
    p = _check_int("dim", dim, 2)
    r = rbar.to(torch.float64)
    if check_values(r) and not bool(((r >= 0) & (r <= 1)).all()):
        raise ValueError(
            "rbar (a mean resultant length ||s|| / m) must lie in [0, 1]; check that the "
            "statistics come from unit-norm embeddings and that the mass is the column sum of r"
        )
    return r * (p - r * r) / (1.0 - r * r)


def resultant_for_concentration(kappa: Tensor, dim: int) -> Tensor:
    """Inverse of `approximate_concentration`: rbar in [0, 1) with kappa = its approximation.

    The approximation increases strictly in rbar (its derivative's numerator is
    p + (p - 3) rbar^2 + rbar^4 > 0), so bisection finds the root; float64, kappa's shape.
    """
    p = _check_int("dim", dim, 2)
    target = kappa.to(torch.float64)
    low, high = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        below = mid * (p - mid * mid) < target * (1.0 - mid * mid)  # approximation(mid) < kappa
        low = torch.where(below, mid, low)
        high = torch.where(below, high, mid)
    return 0.5 * (low + high)


def _check_config(
    forgetting: float, tau: float, min_mass: float, prior_mass: float, dead_policy: str
) -> None:
    if not 0.0 < forgetting <= 1.0:
        raise ValueError(
            f"forgetting must lie in (0, 1], got {forgetting}; it is the weight of the old "
            f"statistics per update (1 keeps everything, {DEFAULT_FORGETTING} about 100 steps)"
        )
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (the teacher temperature), got {tau}")
    if not (min_mass >= 0 and math.isfinite(min_mass)):
        raise ValueError(
            f"min_mass must be finite and >= 0 (rows of responsibility), got {min_mass}"
        )
    if not (prior_mass >= 0 and math.isfinite(prior_mass)):
        raise ValueError(f"prior_mass must be finite and >= 0 (pseudo-rows), got {prior_mass}")
    if dead_policy not in DEAD_POLICIES:
        raise ValueError(f"dead_policy must be one of {DEAD_POLICIES}, got {dead_policy!r}")


class OnlineVMFMixture(nn.Module):
    """vMF mixture of K components in R^D fitted by online EM; W [K, D] from `prototypes()`.

    Buffers (saved by `state_dict`, so a resumed run continues exactly): mass [K] and resultant
    [K, D] (the forgotten sufficient statistics m, s), direction [K, D] and kappa [K] (the
    fitted parameters). Call `.double()` for float64 state; the per-component M-step is always
    computed in float64.
    """

    mass: Tensor
    resultant: Tensor
    direction: Tensor
    kappa: Tensor

    def __init__(
        self,
        num_prototypes: int,
        dim: int,
        forgetting: float = DEFAULT_FORGETTING,
        tau: float = 0.07,
        min_mass: float = DEFAULT_MIN_MASS,
        prior_mass: float = 1.0,
        dead_policy: str = "keep",
        init_kappa: float | None = None,
        max_kappa: float = DEFAULT_MAX_KAPPA,
        fit_concentration: bool = True,
        refill_per_step: int = DEFAULT_REFILL_PER_STEP,
    ) -> None:
        super().__init__()
        # False: every kappa_k stays init_kappa and only the mean directions are fitted
        self.fit_concentration = bool(fit_concentration)
        self.num_prototypes = _check_int("num_prototypes", num_prototypes, 1)
        self.dim = _check_int("dim", dim, 2)
        _check_config(forgetting, tau, min_mass, prior_mass, dead_policy)
        self.forgetting, self.tau = float(forgetting), float(tau)
        self.min_mass, self.prior_mass = float(min_mass), float(prior_mass)
        self.dead_policy = dead_policy
        self.refill_per_step = _check_int("refill_per_step", refill_per_step, 1)
        # 1 / tau: unit-norm rows W_k, the vMF head's start (log C_p equal for all k).
        self.init_kappa = 1.0 / self.tau if init_kappa is None else float(init_kappa)
        self.max_kappa = float(max_kappa)
        if not (KAPPA_FLOOR <= self.init_kappa <= self.max_kappa < math.inf):
            raise ValueError(
                f"init_kappa must lie in [{KAPPA_FLOOR}, max_kappa] with a finite max_kappa, got "
                f"init_kappa={self.init_kappa}, max_kappa={self.max_kappa}; leave init_kappa "
                "unset for 1 / tau (unit-norm prototypes)"
            )
        k, d = self.num_prototypes, self.dim
        self.register_buffer("mass", torch.zeros(k))
        self.register_buffer("resultant", torch.zeros(k, d))
        self.register_buffer("direction", torch.zeros(k, d))
        self.register_buffer("kappa", torch.zeros(k))
        # random unit rows, drawn as the head draws its prototypes
        self.initialize(F.normalize(torch.randn(k, d), dim=1))

    def initialize(self, directions: Tensor, kappa: float | None = None) -> None:
        """Restart from unit `directions` [K, D] with concentration `kappa` (init_kappa if None).

        Each component gets `prior_mass` pseudo-rows whose statistics refit to exactly this
        direction and kappa, so W is defined before the first update and early updates lean on
        the start in proportion to prior_mass.
        """
        if tuple(directions.shape) != (self.num_prototypes, self.dim):
            raise ValueError(
                f"directions must be [K={self.num_prototypes}, D={self.dim}], got "
                f"{tuple(directions.shape)}"
            )
        start = self.init_kappa if kappa is None else float(kappa)
        if not KAPPA_FLOOR <= start <= self.max_kappa:
            raise ValueError(f"kappa must lie in [{KAPPA_FLOOR}, {self.max_kappa}], got {start}")
        self._check_unit_rows(directions, "directions")
        with torch.no_grad():
            dirs = F.normalize(directions.detach().to(self.direction), dim=1)  # [K, D]
            kappa_t = torch.full_like(self.kappa, start)  # [K]
            rbar = resultant_for_concentration(kappa_t, self.dim).to(kappa_t)  # [K]
            self.direction.copy_(dirs)
            self.kappa.copy_(kappa_t)
            self.mass.fill_(self.prior_mass)
            self.resultant.copy_(dirs * (self.prior_mass * rbar)[:, None])

    def prototypes(self, tau: float | None = None) -> Tensor:
        """W [K, D] = mu_k kappa_k tau (no gradient); `tau` defaults to the one built with.

        Pass the teacher temperature in use, so that the teacher's tempered logits
        <W_k, y> / tau are exactly the components' log-densities kappa_k <mu_k, y>.
        """
        scale = self.tau if tau is None else float(tau)
        if not scale > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        return (self.direction * (self.kappa * scale)[:, None]).detach()

    def log_mixing_weights(self) -> Tensor:
        """log(m_k / sum_j m_j) [K]: the mixture weights EM would estimate, for analysis only
        (the logits do not use them; see the module docstring)."""
        tiny = torch.finfo(self.mass.dtype).tiny
        return (self.mass.clamp_min(tiny) / self.mass.sum().clamp_min(tiny)).log()

    def dead(self) -> Tensor:
        """Mask [K] of the components whose mass is below min_mass."""
        return self.mass < self.min_mass

    def responsibility_statistics(
        self, y: Tensor, center: Tensor | None = None, block: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """E-step on this rank's rows: (sum_n r[n, :] [K], r^T Y [K, D]) in the state's dtype.

        y [N, D] unit rows; center [K] is subtracted from the logits as the teacher's centre is.
        The loss's teacher-only sweep (kernels.teacher_responsibilities): [N, block] tiles over
        K, `block` prototypes at a time (default: the loss's tile budget).
        """
        self._check_embeddings(y, center)
        dtype = self.mass.dtype
        shift = torch.zeros_like(self.mass) if center is None else center.detach().to(dtype)
        stats = teacher_responsibilities_chunked(
            y.detach().to(dtype), self.prototypes(), shift, self.tau, True, block
        )
        return stats.mass.to(dtype), stats.resultant.to(dtype)

    def update(self, y: Tensor, center: Tensor | None = None, block: int | None = None) -> Tensor:
        """One online EM step on this rank's embeddings y [N, D] (all ranks must call it);
        returns the indices of the components the dead policy moved (update_from_statistics)."""
        mass, sums = self.responsibility_statistics(y, center, block)
        return self.update_from_statistics(mass, sums, y.shape[0], seeds=y)

    def update_from_statistics(
        self, mass_batch: Tensor, sum_batch: Tensor, rows: int, seeds: Tensor | None = None
    ) -> Tensor:
        """M-step from this rank's column sums of r [K] and r^T Y [K, D] over `rows` rows.

        A collective under DDP (every rank calls it, with or without rows): the statistics are
        summed over ranks before they fold in. A global batch without rows changes nothing (no
        forgetting either). With dead_policy "reseed" or "refill", `seeds` [N, D] are the
        batch's unit embeddings to move dead components onto (rank 0's are used). Returns the
        indices [n] (long, the same on every rank) of the components moved, so that a centring
        can forget their past (Centering.restart_columns); empty under "keep".
        """
        count = self._check_statistics(mass_batch, sum_batch, rows)
        if self.dead_policy != "keep" and seeds is None:
            raise ValueError(
                f"dead_policy={self.dead_policy!r} needs seeds: pass the batch's teacher "
                "embeddings [N, D] (an empty [0, D] tensor on a rank without rows), or use "
                "dead_policy='keep'"
            )
        with torch.no_grad():
            mass = mass_batch.detach().to(self.mass.dtype)  # [K]
            packed = torch.cat([mass, mass.new_full((1,), float(count))])  # [K + 1]
            sums = sum_batch.detach().to(self.resultant.dtype, copy=True)  # [K, D]
            if _distributed():
                dist.all_reduce(packed)
                dist.all_reduce(sums)
            # an empty global batch keeps the state as it is, decided without a host sync
            alpha = torch.where(
                packed[-1] > 0, packed.new_full((), self.forgetting), packed.new_ones(())
            )  # 0-dim, forgetting kept in the state's precision
            self.mass.mul_(alpha).add_(packed[:-1])
            self.resultant.mul_(alpha).add_(sums)
            self._refit()
            if self.dead_policy == "reseed" and seeds is not None:
                return self._reseed(seeds)
            if self.dead_policy == "refill" and seeds is not None:
                return self._refill(seeds)
            return torch.zeros(0, dtype=torch.long, device=self.mass.device)

    def _refit(self) -> None:
        """mu_k, kappa_k from (m_k, s_k) for every live component with a non-zero resultant."""
        length = self.resultant.norm(dim=1)  # [K]
        mass = self.mass.to(torch.float64)
        rbar = (length.to(torch.float64) / mass.clamp_min(torch.finfo(mass.dtype).tiny)).clamp(0, 1)
        kappa = approximate_concentration(rbar, self.dim).clamp(KAPPA_FLOOR, self.max_kappa)
        refit = (~self.dead()) & (length > 0)  # [K]
        mu = self.resultant / length.clamp_min(torch.finfo(length.dtype).tiny)[:, None]
        self.direction.copy_(torch.where(refit[:, None], mu, self.direction))
        if self.fit_concentration:
            self.kappa.copy_(torch.where(refit, kappa.to(self.kappa), self.kappa))

    def _reseed(self, seeds: Tensor) -> Tensor:
        """Move each dead component onto a distinct row of rank 0's `seeds` [N, D]; returns the
        indices moved."""
        dead = self.dead().nonzero().squeeze(1)  # [n_dead], a host sync
        if dead.numel() == 0:
            return dead
        # every rank draws the same count, so the ranks' generators stay in step
        draws = torch.rand(dead.numel(), dtype=torch.float64)  # [n_dead], CPU generator
        picked = self._pick_rows(seeds, draws)  # [n_dead, D + 1]: direction, valid flag
        return self._place(dead, picked)

    def _refill(self, seeds: Tensor) -> Tensor:
        """Move up to refill_per_step dead components (least mass first) onto the rows of rank
        0's `seeds` [N, D] that the live components cover worst, picked farthest-first; returns
        the indices moved."""
        dead = self.dead().nonzero().squeeze(1)  # [n_dead], a host sync
        if dead.numel() == 0:
            return dead
        order = torch.argsort(self.mass[dead], stable=True)  # the same on every rank
        chosen = dead[order[: self.refill_per_step]]  # [n]
        picked = self.direction.new_zeros(chosen.numel(), self.dim + 1)  # [n, D + 1]
        if not _distributed() or dist.get_rank() == 0:
            if seeds.dim() != 2 or seeds.shape[1] != self.dim:
                raise ValueError(f"seeds must be [N, D={self.dim}], got {tuple(seeds.shape)}")
            rows = F.normalize(seeds.detach().to(picked), dim=1)  # [N, D]
            index = farthest_rows(rows, self.direction[~self.dead()], chosen.numel())  # [n']
            picked[: index.numel(), :-1] = rows[index]
            picked[: index.numel(), -1] = 1.0
        return self._place(chosen, picked)

    def _place(self, index: Tensor, picked: Tensor) -> Tensor:
        """Put components `index` [n] onto rank 0's `picked` [n, D + 1] (direction, valid
        flag), with the live median kappa and statistics of mass min_mass that refit to them;
        returns the indices placed (those with a valid row)."""
        seed_kappa = self._seed_kappa()  # 0-dim
        if _distributed():
            dist.broadcast(picked, src=0)
        valid = picked[:, -1] > 0  # [n]
        index, dirs = index[valid], picked[valid, :-1]
        rbar = resultant_for_concentration(seed_kappa, self.dim).to(self.kappa)  # 0-dim
        self.direction[index] = dirs
        self.kappa[index] = seed_kappa
        self.mass[index] = self.min_mass
        self.resultant[index] = dirs * (self.min_mass * rbar)
        return index

    def _seed_kappa(self) -> Tensor:
        """The live components' median kappa, so that a re-seeded component competes for the
        rows around its seed; init_kappa while no component is live."""
        live = ~self.dead()  # [K]
        if bool(live.any()):
            return self.kappa[live].median()
        return self.kappa.new_full((), self.init_kappa)

    def _pick_rows(self, seeds: Tensor, draws: Tensor) -> Tensor:
        """Unit rows of `seeds` chosen by `draws` (uniform in [0, 1)), with a flag that is 0
        for a draw repeating an earlier one's row (that component waits for the next batch)."""
        picked = self.direction.new_zeros(draws.numel(), self.dim + 1)  # [n_dead, D + 1]
        if seeds.dim() != 2 or seeds.shape[1] != self.dim:
            raise ValueError(f"seeds must be [N, D={self.dim}], got {tuple(seeds.shape)}")
        n = seeds.shape[0]
        if n == 0:
            return picked
        rows = (draws * n).long().clamp_max(n - 1)  # [n_dead]
        unique, inverse = torch.unique(rows, return_inverse=True)
        first = torch.full((unique.numel(),), draws.numel()).scatter_reduce(
            0, inverse, torch.arange(draws.numel()), "amin"
        )  # [n_unique], the first draw of each row
        candidates = seeds.detach().to(picked)  # [N, D] on the state's device
        picked[:, :-1] = F.normalize(candidates[rows.to(picked.device)], dim=1)
        picked[first.to(picked.device), -1] = 1.0
        return picked

    def _check_unit_rows(self, rows: Tensor, name: str) -> None:
        if rows.shape[0] == 0 or not check_values(rows):
            return
        norms = rows.detach().to(torch.float64).norm(dim=1)  # [N]
        if not bool(((norms - 1.0).abs() <= UNIT_TOLERANCE).all()):
            worst = float((norms - 1.0).abs().nan_to_num(math.inf).max())
            raise ValueError(
                f"{name} must be L2-normalised rows (the head's output y = z / ||z||); a row's "
                f"norm is off by {worst:.3g} > {UNIT_TOLERANCE}. Normalise them first, e.g. "
                "torch.nn.functional.normalize(x, dim=1)"
            )

    def _check_embeddings(self, y: Tensor, center: Tensor | None) -> None:
        if y.dim() != 2 or y.shape[1] != self.dim or not y.is_floating_point():
            raise ValueError(
                f"y must be a floating [N, D={self.dim}] tensor of embeddings, got "
                f"{tuple(y.shape)} {y.dtype}"
            )
        self._check_unit_rows(y, "y")
        if center is not None and tuple(center.shape) != (self.num_prototypes,):
            raise ValueError(
                f"center must be [K={self.num_prototypes}] (the teacher's centre in the "
                f"tempered-logit domain) or None, got {tuple(center.shape)}"
            )

    def _check_statistics(self, mass_batch: Tensor, sum_batch: Tensor, rows: int) -> int:
        k, d = self.num_prototypes, self.dim
        count = _check_int("rows", rows, 0)
        if tuple(mass_batch.shape) != (k,) or tuple(sum_batch.shape) != (k, d):
            raise ValueError(
                f"mass_batch must be [K={k}] and sum_batch [K={k}, D={d}], got "
                f"{tuple(mass_batch.shape)} and {tuple(sum_batch.shape)}"
            )
        if not check_values(mass_batch, sum_batch):
            return count
        mass = mass_batch.detach().to(torch.float64)
        slack = 1e-3 * max(count, 1)  # float32 sums of N softmax rows
        if not bool(torch.isfinite(mass).all()) or abs(float(mass.sum()) - count) > slack:
            raise ValueError(
                f"mass_batch must be the column sums of the responsibilities over the {count} "
                f"rows (they add up to rows), got a total of {float(mass.sum()):.6g}; from the "
                "loss's teacher column means, pass means * rows"
            )
        length = sum_batch.detach().to(torch.float64).norm(dim=1)  # [K]
        if not bool((length <= mass.clamp_min(0) * (1 + 1e-3) + 1e-6).all()):
            raise ValueError(
                "sum_batch must be r^T Y of unit-norm embeddings: a row's norm exceeds its mass"
            )
        return count

    def extra_repr(self) -> str:
        return (
            f"num_prototypes={self.num_prototypes}, dim={self.dim}, forgetting={self.forgetting}, "
            f"tau={self.tau}, min_mass={self.min_mass}, dead_policy={self.dead_policy!r}, "
            f"refill_per_step={self.refill_per_step}"
        )
