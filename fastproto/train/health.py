"""Training health: the numbers that tell a learning run from DINO's two collapses.

Uniform collapse: every image gets the same flat distribution, so the per-sample teacher
entropy sits at log K while the batch-mean entropy (the only one the loss log had) also reads
log K and looks healthy. Dimensional collapse: every image gets the same peaked distribution
(per-sample entropy near 0, batch-mean entropy near 0). Per step, on a subsample of rows:

    H_t  = mean over rows m of H(softmax(b[m]))    per-sample teacher entropy (centred logits)
    H_s  = mean over rows n of H(softmax(a[n]))    per-sample student entropy
    std_t, std_s = mean over rows of the std over k of b[m, k] / a[n, k]     logit spread

and per epoch, of the prototype matrix W [K, D] against its initial value W0:

    movement = mean_k (1 - cos(w_k, w0_k))        how far the prototypes travelled
    nn       = quantiles of min_{j != k} (1 - cos(w_k, w_j))   (on up to 4096 sampled rows)

A duplicate in paper 1's sense is a pair at cosine distance < 0.025; the nearest-neighbour
quantiles show such pairs forming long before M drops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HEALTH_ROWS = 32  # rows of each side the per-step numbers are computed on ([32, K] at most)
NN_SAMPLE = 4096  # prototypes whose nearest neighbour is searched for at epoch end
NN_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95)
COLLAPSE_MARGIN = 0.1  # nats below log K
PARTIAL_COLLAPSE = 0.9  # M / K below which the run is warned of partial prototype collapse


def _entropy_and_spread(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, K] -> (mean per-row entropy, mean per-row std over k), 0-d tensors."""
    logits = logits.double()
    log_p = torch.log_softmax(logits, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)  # [R]
    return entropy.mean(), logits.std(dim=1).mean()


@torch.no_grad()
def prediction_health(
    student_y: torch.Tensor,
    teacher_y: torch.Tensor,
    student_protos: torch.Tensor,
    teacher_protos: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
) -> dict[str, torch.Tensor]:
    """Per-sample entropies and logit spreads of the first HEALTH_ROWS rows of each side, as
    0-d float64 tensors on the device: the step reads them to the host with its loss terms, in
    one copy.

    student_y [Ns, D], teacher_y [Nt, D], prototypes [K, D], center [K] (tempered-logit domain).
    """
    from fastproto.kernels.reference import student_logits, teacher_logits

    w_s, w_t = student_protos.detach(), teacher_protos.detach()
    a = student_logits(student_y[:HEALTH_ROWS].detach(), w_s, student_temp, vmf)  # [R, K]
    b = teacher_logits(teacher_y[:HEALTH_ROWS].detach(), w_t, center, teacher_temp, vmf)
    h_s, std_s = _entropy_and_spread(a)
    h_t, std_t = _entropy_and_spread(b)
    values = (h_t, h_s, std_t, std_s)
    names = (
        "teacher_entropy_per_sample",
        "student_entropy_per_sample",
        "teacher_logit_std",
        "student_logit_std",
    )
    return dict(zip(names, values, strict=True))


@torch.no_grad()
def prototype_movement(weights: torch.Tensor, initial: torch.Tensor) -> float:
    """Mean cosine distance of each w_k [K, D] from its initial value w0_k [K, D]."""
    cos = F.cosine_similarity(weights.float(), initial.float().to(weights.device), dim=1)
    return float((1.0 - cos).clamp_min(0.0).mean())  # rounding can put cos a hair above 1


@torch.no_grad()
def nearest_neighbour_distances(
    weights: torch.Tensor, sample: int = NN_SAMPLE, chunk: int = 1024, seed: int = 0
) -> torch.Tensor:
    """Cosine distance from each of up to `sample` prototypes (seeded choice) to its nearest
    other prototype among all K; [min(sample, K)], float32. Needs K >= 2."""
    directions = F.normalize(weights.float(), dim=1)  # [K, D]
    k = directions.shape[0]
    if k < 2:
        raise ValueError("nearest-neighbour distances need at least 2 prototypes")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(k, generator=generator)[: min(sample, k)].to(directions.device)
    out = []
    for start in range(0, rows.numel(), chunk):
        index = rows[start : start + chunk]
        sims = directions[index] @ directions.T  # [c, K]
        sims[torch.arange(index.numel(), device=sims.device), index] = -2.0  # not itself
        out.append(1.0 - sims.max(dim=1).values)
    return torch.cat(out).clamp_min(0.0)


def prototype_health(weights: torch.Tensor, initial: torch.Tensor) -> dict[str, object]:
    """Epoch record: movement since initialisation and nearest-neighbour distance quantiles."""
    record: dict[str, object] = {"prototype_movement": prototype_movement(weights, initial)}
    if weights.shape[0] >= 2:
        distances = nearest_neighbour_distances(weights).double()
        levels = torch.tensor(NN_QUANTILES, dtype=torch.float64, device=distances.device)
        q = torch.quantile(distances, levels)
        record["nn_distance_quantiles"] = dict(
            zip([f"p{round(100 * x)}" for x in NN_QUANTILES], q.tolist(), strict=True)
        )
        record["nn_distance_below_eps"] = float((distances < 0.025).double().mean())
    return record


def partial_collapse_warning(epoch: int, unique: int, num_prototypes: int, koleo: float) -> str:
    """The text of the partial-collapse warning: M of K unique prototypes at `epoch`."""
    return (
        f"warning: epoch {epoch}: partial prototype collapse: M = {unique} of K = "
        f"{num_prototypes} prototypes are unique (M / K = {unique / num_prototypes:.2f} < "
        f"{PARTIAL_COLLAPSE}): many prototypes have moved onto the same direction, so the run "
        f"uses fewer clusters than it pays for. KoLeo-proto (method.koleo_proto, now {koleo:g}; "
        "paper 1 uses 0.1) keeps them apart; less decay on the prototype matrix "
        "(optim.prototype_weight_decay, _end) slows the approach."
    )


class CollapseWatch:
    """Warns once when the per-sample teacher entropy stays within COLLAPSE_MARGIN of log K
    for a whole epoch after `warmup_epochs` (DINO's uniform collapse), and once when the
    unique prototypes M fall below PARTIAL_COLLAPSE of K (partial prototype collapse)."""

    def __init__(self, num_prototypes: int, warmup_epochs: int, koleo_proto: float = 0.0) -> None:
        self.num_prototypes = num_prototypes
        self.threshold = math.log(num_prototypes) - COLLAPSE_MARGIN
        self.warmup_epochs = warmup_epochs
        self.koleo_proto = koleo_proto
        self.lowest = math.inf  # the epoch's lowest per-sample teacher entropy so far
        self.warned = False
        self.warned_partial = False

    def unique_prototypes(self, epoch: int, unique: int) -> str | None:
        """The partial-collapse warning the first time M / K < PARTIAL_COLLAPSE; else None."""
        if self.warned_partial or unique >= PARTIAL_COLLAPSE * self.num_prototypes:
            return None
        self.warned_partial = True
        return partial_collapse_warning(epoch, unique, self.num_prototypes, self.koleo_proto)

    def update(self, record: dict[str, float]) -> None:
        value = record.get("teacher_entropy_per_sample")
        if isinstance(value, float):
            self.lowest = min(self.lowest, value)

    def end_epoch(self, epoch: int) -> str | None:
        """The warning text the first time a whole epoch stayed flat; None otherwise."""
        flat = self.lowest >= self.threshold and math.isfinite(self.lowest)
        self.lowest = math.inf
        if self.warned or epoch < self.warmup_epochs or not flat:
            return None
        self.warned = True
        return (
            f"warning: epoch {epoch}: the per-sample teacher entropy stayed within "
            f"{COLLAPSE_MARGIN} of log K = {self.threshold + COLLAPSE_MARGIN:.2f} for the whole "
            "epoch: every image gets a near-uniform prototype distribution (DINO's uniform "
            "collapse), so the network is not learning. Likely causes and knobs: a teacher "
            "that moves too slowly (optim.momentum_teacher, momentum_teacher_end), too little "
            "sharpening (method.teacher_temp, warmup_teacher_temp), too low a learning rate "
            "(optim.lr), augmentation too strong for the image size (augment.blur_p, "
            "augment.solarise_p, augment.blur_sigma); method.koleo_data spreads the features."
        )
