"""What every prototype loss returns: the loss and the teacher's batch statistics it made."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LossResult:
    """One prototype loss over Nt teacher rows and K prototypes.

    loss        scalar, differentiable in the student embeddings and prototypes.
    mean_probs  [K], no gradient: mean over the teacher rows of the centred, sharpened teacher
                softmax, the loss's targets.
    raw_means   [K], no gradient, only when the loss was called with raw_means=True (else None):
                the same mean of the uncentred teacher softmax (centre 0), the batch statistic
                of probability centring (ProbabilityCentering.after_loss folds it in).
    """

    loss: Tensor
    mean_probs: Tensor
    raw_means: Tensor | None = None
