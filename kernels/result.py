"""What every prototype loss returns: the loss and the teacher's batch statistics it made."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

# What `estep=` asks a loss for: the E-step of the prototypes' vMF mixture over the teacher rows,
# under the uncentred teacher softmax (the mixture's own fit) or under the loss's centred targets.
ESTEPS = ("uncentred", "centred")


@dataclass(frozen=True)
class Responsibilities:
    """E-step statistics of the teacher rows y_t [Nt, D] under a softmax r [Nt, K] over the K
    prototypes, no gradient, in the loss's compute dtype (float32, float64 for float64 input).

    mass       [K], sum_m r[m, k]: each prototype's responsibility mass (adds up to Nt).
    resultant  [K, D], r^T Y_t: the responsibility-weighted sum of the teacher rows.
    """

    mass: Tensor
    resultant: Tensor


@dataclass(frozen=True)
class LossResult:
    """One prototype loss over Nt teacher rows and K prototypes.

    loss              scalar, differentiable in the student embeddings and prototypes.
    mean_probs        [K], no gradient: mean over the teacher rows of the centred, sharpened
                      teacher softmax, the loss's targets.
    raw_means         [K], no gradient, only when the loss was called with raw_means=True (else
                      None): the same mean of the uncentred teacher softmax (centre 0), the batch
                      statistic of probability centring (ProbabilityCentering.after_loss folds
                      it in).
    responsibilities  only when the loss was called with estep= (else None): the E-step
                      statistics of the teacher rows, the input of the prototypes' online EM
                      (OnlineVMFMixture.update_from_statistics).
    """

    loss: Tensor
    mean_probs: Tensor
    raw_means: Tensor | None = None
    responsibilities: Responsibilities | None = None
