"""Regularisers of the marginal latent class distribution: teacher centring and ME-MAX.

Every centring scheme yields a vector center [K] in the tempered-logit domain, subtracted from
the teacher logits inside the fused loss (kernels/reference.py):

    L[m, k] = <w_t[k], y_t[m]> / tau_t + vmf_t[k]      uncentred teacher logits     [Nt, K]
    b[m, k] = L[m, k] - center[k]                      what the loss sees            [Nt, K]

Schemes (`make_centering(kind, ...)`):

- "logit" (DINO, DINO-vMF eq. 8): c <- m c + (1 - m) mean_m o[m, k], center = c / tau_t, where
  o = tau_t * L is the teacher output before sharpening. Without vMF o[m, k] = <w_t[k], y_t[m]>,
  and its batch mean is <w_t[k], mean_m y_t[m]>, so no [Nt, K] matrix is formed. With vMF the
  teacher's logit carries log C_p(||w_k|| / tau_t) in the tempered domain, so the unsharpened
  output carries tau_t * log C_p; c therefore holds the EMA of the log-normaliser too (the effect
  DINO-vMF section 3.4 describes), and c / tau_t is the EMA of the vMF logits L when tau_t is
  constant. c is kept unsharpened, as in DINO, so a teacher-temperature schedule rescales it.
- "probability" (DINO-vMF eq. 9, paper 1 eq. 4): c <- m c + (1 - m) log(mean_m softmax(L[m])),
  center = c. The column means come from `teacher_statistics` with a zero center.
- "sinkhorn" (paper 1 eq. 3 iterated): Sinkhorn-Knopp over the batch in the log domain, starting
  from u = 0 and the row-normalised softmax(L):
      u <- u + log(mean_m softmax(L[m] - u))     (column normalisation, then the row one)
  repeated `sinkhorn_iterations` times; the target is softmax(L - u) row-wise, center = u. Each
  iteration needs only the column means of the current target, so it never exponentiates L
  outside a softmax and stays finite where exp(L) overflows (vMF logits with large ||w||).
  One iteration equals "probability" with m = 0 (paper 1 section 3). Stateless; the last u is
  kept in a buffer for logging.
- "none": zeros.

Order (as in DINO): the EMA schemes return the center from *before* this batch, which the loss
uses, and then fold this batch into the running state. Distributed: when torch.distributed is
initialised, each batch statistic [K] is averaged over ranks weighted by their row counts (one
all-reduce of K + 1 floats per statistic), so every rank keeps the same state and Sinkhorn-Knopp
runs over the global batch.

In training a loss is centred by `centre_for_loss` and then hands its result to `after_loss`,
with raw_means=`needs_raw_means`: probability centring takes its batch statistic from the
loss's own passes (LossResult.raw_means) and so needs no pass of its own; the other schemes
move their state in `centre_for_loss`, as the module call does, and ignore the result.

ME-MAX (paper 1 section 3): `me_max_penalty` = -H(mean_n softmax(a[n])) on the student logits a;
minimising it maximises the entropy of the mean student prediction.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastproto.kernels import LossResult, teacher_statistics
from fastproto.kernels.reference import prototype_bias, student_logits
from fastproto.kernels.validate import check_teacher_inputs

KINDS = ("logit", "probability", "sinkhorn", "none")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_mean(stat: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """Mean of a per-rank batch statistic [K] over all ranks, weighted by each rank's `rows`.

    `stat` is this rank's mean over its `rows` rows; a rank with no rows adds nothing (its
    `stat` is not read, so it may be NaN). Returns (mean [K], total rows as a 0-dim tensor): with
    no row on any rank the mean is 0 and the total 0, decided on the device, without a host sync.
    Without a process group this rank's rows are the total.
    """
    local = stat * rows if rows > 0 else torch.zeros_like(stat)
    packed = torch.cat([local, stat.new_full((1,), float(rows))])  # [K + 1], no host copy
    if _distributed():
        dist.all_reduce(packed)
    total = packed[-1]
    return packed[:-1] / total.clamp_min(1.0), total


def _safe_log(probs: Tensor) -> Tensor:
    # A column mean that underflows to 0 would give -inf and then NaN in the next softmax.
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _column_mean(
    teacher: Tensor, protos: Tensor, center: Tensor, teacher_temp: float, vmf: bool, impl: str
) -> Tensor:
    """Batch-mean teacher probabilities [K]; zeros for a batch without rows (global_mean then
    leaves this rank out)."""
    if teacher.shape[0] == 0:
        return teacher.new_zeros(protos.shape[0])
    return teacher_statistics(teacher, protos, center, teacher_temp, vmf, impl)[1]


class Centering(nn.Module):
    """Base class: validates the batch, runs without grad, returns the center [K] to use."""

    # True: call the loss with raw_means=True and hand its result to after_loss
    needs_raw_means: ClassVar[bool] = False

    def __init__(self, num_prototypes: int) -> None:
        super().__init__()
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int):
            raise ValueError(f"num_prototypes must be an int, got {num_prototypes!r}")
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
        self.num_prototypes = num_prototypes

    def forward(
        self,
        teacher: Tensor,
        teacher_protos: Tensor,
        teacher_temp: float,
        vmf: bool,
        impl: str = "auto",
    ) -> Tensor:
        """Center [K] for this batch (teacher [Nt, D], teacher_protos [K, D]); updates the state.

        The EMA schemes return the center from before this batch, then fold the batch in.
        """
        self._check_prototypes(teacher_protos)
        k = self.num_prototypes
        # a batch may have no rows (an iBOT step without a masked token): it moves no state, but
        # under DDP this rank must still join the all-reduce of the ranks that have rows
        zero = teacher_protos.new_zeros(k)
        check_teacher_inputs(teacher, teacher_protos, zero, teacher_temp, min_rows=0)
        # Statistics in at least float32: a bf16 teacher (autocast) would round the logs and
        # the Sinkhorn updates; float64 inputs stay float64. Returned center has this dtype.
        dtype = torch.promote_types(
            torch.promote_types(teacher.dtype, teacher_protos.dtype), torch.float32
        )
        with torch.no_grad():
            return self._center(
                teacher.detach().to(dtype),
                teacher_protos.detach().to(dtype),
                teacher_temp,
                vmf,
                impl,
            )

    def _check_prototypes(self, teacher_protos: Tensor) -> None:
        k = self.num_prototypes
        if teacher_protos.dim() != 2 or teacher_protos.shape[0] != k:
            raise ValueError(
                f"this centring was built with num_prototypes={k} but teacher_protos has shape "
                f"{tuple(teacher_protos.shape)}; pass [K={k}, D] prototypes or build the centring "
                f"with make_centering(kind, num_prototypes=K)"
            )

    def _center(
        self, teacher: Tensor, teacher_protos: Tensor, teacher_temp: float, vmf: bool, impl: str
    ) -> Tensor:
        raise NotImplementedError

    def centre_for_loss(
        self,
        teacher: Tensor,
        teacher_protos: Tensor,
        teacher_temp: float,
        vmf: bool,
        impl: str = "auto",
    ) -> Tensor:
        """The centre [K] a loss subtracts from this batch's tempered teacher logits (teacher
        [Nt, D], teacher_protos [K, D]); hand the loss's result to `after_loss` afterwards.
        Here the module call, which folds the batch into the state itself."""
        return self(teacher, teacher_protos, teacher_temp, vmf, impl)

    def after_loss(self, result: LossResult, rows: int) -> None:
        """Fold the loss's batch statistics over this rank's `rows` teacher rows into the state;
        nothing here, where centre_for_loss has folded the batch in."""

    def centre_now(self, teacher_temp: float) -> Tensor:
        """The centre [K] in the tempered-logit domain as the state holds it now, read without
        moving it (for analysis between steps); 0 where a scheme keeps none."""
        return torch.zeros(self.num_prototypes)

    def restart_columns(self, index: Tensor) -> None:
        """Forget what the state holds of prototypes `index` [n] (long), because they were
        moved (an EM mixture's re-seeded components): nothing here, where no state is kept."""

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}"


class NoCentering(Centering):
    """center = 0."""

    def _center(
        self, teacher: Tensor, teacher_protos: Tensor, teacher_temp: float, vmf: bool, impl: str
    ) -> Tensor:
        return teacher.new_zeros(self.num_prototypes)


class _EmaCentering(Centering):
    """Shared state of the EMA schemes: buffer `center` [K] and `momentum`."""

    center: Tensor

    def __init__(self, num_prototypes: int, momentum: float) -> None:
        super().__init__(num_prototypes)
        self.momentum = float(momentum)
        self.register_buffer("center", torch.zeros(num_prototypes))

    def _fold_in(self, batch_stat: Tensor, total_rows: Tensor) -> None:
        """c <- m c + (1 - m) batch_stat, in place, in the buffer's dtype; c stays as it is when
        the global batch had no rows (total_rows = 0: an iBOT step without a masked token)."""
        step = (1.0 - self.momentum) * (total_rows > 0).to(self.center.dtype)  # 0-dim
        self.center.add_(step * (batch_stat.to(self.center.dtype) - self.center))

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, momentum={self.momentum}"


class LogitCentering(_EmaCentering):
    """DINO's centring; the buffer holds c unsharpened, the returned center is c / tau_t."""

    def _center(
        self, teacher: Tensor, teacher_protos: Tensor, teacher_temp: float, vmf: bool, impl: str
    ) -> Tensor:
        center = self.center.to(teacher.dtype) / teacher_temp  # a new tensor: [K]
        mean_output = teacher_protos @ teacher.mean(dim=0)  # [K] = <w_k, mean_m y_m>
        mean_output, total = global_mean(mean_output, teacher.shape[0])
        if vmf:
            # Same on every rank, so it can be added after the reduction.
            mean_output = mean_output + teacher_temp * prototype_bias(
                teacher_protos, teacher_temp, True
            )
        self._fold_in(mean_output, total)
        return center

    def centre_now(self, teacher_temp: float) -> Tensor:
        return self.center / teacher_temp

    def restart_columns(self, index: Tensor) -> None:
        """The moved prototypes take the mean centre of all of them: their old mean output
        described a direction they no longer have."""
        self.center[index] = self.center.mean()


class ProbabilityCentering(_EmaCentering):
    """DINO-vMF's centring: EMA of the log of the batch-mean teacher probabilities.

    Called as a module it computes the batch statistic itself (2 passes over the teacher
    logits). Through `centre_for_loss` and `after_loss` the loss makes it on its own sweeps
    (LossResult.raw_means) instead: the same state, with no pass of its own.
    """

    needs_raw_means = True

    def _center(
        self, teacher: Tensor, teacher_protos: Tensor, teacher_temp: float, vmf: bool, impl: str
    ) -> Tensor:
        center = self.current(teacher.dtype)  # [K], before this batch
        zero = teacher.new_zeros(self.num_prototypes)
        column_mean = _column_mean(teacher, teacher_protos, zero, teacher_temp, vmf, impl)
        self.fold_column_mean(column_mean, teacher.shape[0])
        return center

    def centre_for_loss(
        self,
        teacher: Tensor,
        teacher_protos: Tensor,
        teacher_temp: float,
        vmf: bool,
        impl: str = "auto",
    ) -> Tensor:
        """The centre [K] from before this batch (`current`); after_loss then folds the batch
        in from the loss's raw means."""
        self._check_prototypes(teacher_protos)
        return self.current(teacher.dtype)

    def after_loss(self, result: LossResult, rows: int) -> None:
        """Fold the loss's raw_means [K] over this rank's `rows` teacher rows into the state."""
        if result.raw_means is None:
            raise ValueError(
                "probability centring folds in the loss's raw means: call the loss with "
                "raw_means=True (the centring's needs_raw_means)"
            )
        self.fold_column_mean(result.raw_means, rows)

    def centre_now(self, teacher_temp: float) -> Tensor:
        return self.current()

    def restart_columns(self, index: Tensor) -> None:
        """The moved prototypes start from the uniform share, log(1 / K). A dead component's
        centre is its tiny past mean probability's log, which the loss subtracts as a bonus of
        many nats; carried onto the data it would take every row's target."""
        self.center[index] = -math.log(self.num_prototypes)

    def current(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The centre [K] before this batch, a copy in at least float32 (`dtype` promoted)."""
        return self.center.to(torch.promote_types(dtype, torch.float32), copy=True)

    def fold_column_mean(self, column_mean: Tensor, rows: int) -> None:
        """Fold this rank's batch-mean uncentred teacher probabilities [K] over `rows` rows
        into the state (all-reduced over ranks first; a rank with no rows adds nothing)."""
        column_mean, total = global_mean(column_mean.detach(), rows)
        self._fold_in(_safe_log(column_mean), total)


class SinkhornCentering(Centering):
    """Log-domain Sinkhorn-Knopp over the (global) batch; buffer `last_center` is for logging."""

    last_center: Tensor

    def __init__(self, num_prototypes: int, iterations: int) -> None:
        super().__init__(num_prototypes)
        self.iterations = int(iterations)
        self.register_buffer("last_center", torch.zeros(num_prototypes))

    def _center(
        self, teacher: Tensor, teacher_protos: Tensor, teacher_temp: float, vmf: bool, impl: str
    ) -> Tensor:
        u = teacher.new_zeros(self.num_prototypes)  # [K]
        for _ in range(self.iterations):
            column_mean = _column_mean(teacher, teacher_protos, u, teacher_temp, vmf, impl)
            column_mean, total = global_mean(column_mean, teacher.shape[0])
            u = u + torch.where(total > 0, _safe_log(column_mean), 0.0)  # no rows: u stays 0
        self.last_center.copy_(u.to(self.last_center.dtype))
        return u

    def centre_now(self, teacher_temp: float) -> Tensor:
        """The last batch's u: Sinkhorn makes its centre from each batch afresh."""
        return self.last_center.clone()

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, iterations={self.iterations}"


def make_centering(
    kind: str, num_prototypes: int, momentum: float = 0.9, sinkhorn_iterations: int = 3
) -> Centering:
    """Build the centring module `kind` in {"logit", "probability", "sinkhorn", "none"}."""
    if kind not in KINDS:
        raise ValueError(f"unknown centring kind {kind!r}; choose one of {KINDS}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}; DINO uses 0.9")
    if isinstance(sinkhorn_iterations, bool) or not isinstance(sinkhorn_iterations, int):
        raise ValueError(f"sinkhorn_iterations must be an int, got {sinkhorn_iterations!r}")
    if sinkhorn_iterations < 1:
        raise ValueError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}; try 3")
    if kind == "logit":
        return LogitCentering(num_prototypes, momentum)
    if kind == "probability":
        return ProbabilityCentering(num_prototypes, momentum)
    if kind == "sinkhorn":
        return SinkhornCentering(num_prototypes, sinkhorn_iterations)
    return NoCentering(num_prototypes)


class _GlobalSum(torch.autograd.Function):
    """Sum of a tensor over ranks, differentiable: the gradient of a sum over ranks with
    respect to one rank's term is the sum of every rank's upstream gradient. Runs both
    collectives on the calling thread (torch.distributed.nn's version is deprecated)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor) -> torch.Tensor:
        total = local.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def me_max_penalty(
    student: Tensor, student_protos: Tensor, student_temp: float, vmf: bool
) -> Tensor:
    """-H(mean_n softmax(a[n])) for student [Ns, D], student_protos [K, D]; a scalar.

    Materialised: holds the student logits and log-probabilities, [Ns, K] each. The batch mean
    is taken in the log domain (logsumexp over rows), so it is finite even when some mean
    probability underflows. Distributed: the mean prediction is over the global batch (each
    rank's row sum is all-reduced with its gradient), so every rank gets the same penalty and,
    after DDP's gradient averaging, the gradient of the one global penalty.
    """
    if student.dim() != 2 or student.shape[0] < 1:
        raise ValueError(f"student must be [Ns, D] with Ns >= 1, got {tuple(student.shape)}")
    if student_protos.dim() != 2 or student_protos.shape[1] != student.shape[1]:
        raise ValueError(
            f"student_protos must be [K, D] with D={student.shape[1]} (the student's), "
            f"got shape {tuple(student_protos.shape)}"
        )
    if student_temp <= 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    logits = student_logits(student, student_protos, student_temp, vmf)  # [Ns, K]
    log_probs = torch.log_softmax(logits, dim=1)  # [Ns, K]
    log_mean = torch.logsumexp(log_probs, dim=0) - math.log(student.shape[0])  # [K]
    if not _distributed():
        return (log_mean.exp() * log_mean).sum()
    rows = log_mean.new_tensor(float(student.shape[0]))
    dist.all_reduce(rows)  # global row count; no gradient needed
    mean = _GlobalSum.apply(log_mean.exp() * student.shape[0]) / rows  # [K], global mean
    return (mean * _safe_log(mean)).sum()
