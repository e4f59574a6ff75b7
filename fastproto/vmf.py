"""Log-normaliser of the von Mises-Fisher distribution, log C_p(kappa).

    C_p(kappa) = kappa^(p/2-1) / ((2 pi)^(p/2) I_{p/2-1}(kappa))

log I_nu uses the uniform asymptotic expansion of DLMF 10.41.3 (first term, as in DINO-vMF).
"""

from __future__ import annotations

import math

import torch


def log_normalizer(kappa: torch.Tensor, dim: int, terms: int = 1) -> torch.Tensor:
    """log C_p(kappa) for p = `dim`, elementwise over `kappa` (any shape), differentiable."""
    nu = dim / 2.0 - 1.0
    r = kappa / nu
    root = torch.sqrt(1.0 + r * r)
    eta = root + torch.log(r / (1.0 + root))
    log_bessel = nu * eta - 0.5 * math.log(2.0 * math.pi * nu) - 0.5 * torch.log(root)
    return nu * torch.log(kappa) - (dim / 2.0) * math.log(2.0 * math.pi) - log_bessel
