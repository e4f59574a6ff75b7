"""Pieces shared by the streaming implementations (chunked and triton).

Both compute in float32 (float64 when the inputs are float64) whatever the input precision, and
both need the same per-prototype biases and the same pair table:

    bias_s[k] = log C_p(||w_s[k]|| / tau_s)                   [K], differentiable (vMF term)
    bias_t[k] = log C_p(||w_t[k]|| / tau_t) - center[k]       [K], no gradient
    rows[n, p]   = targets[n, p] clamped to >= 0              [Ns, P] int64
    pair_w[n, p] = weights[n, p] where targets[n, p] >= 0, else 0     [Ns, P]

The loss and teacher_mean_probs come back in the compute dtype (float32 for float16/bfloat16
inputs: a sum over Ns*P rows of ~log K overflows float16 at iBOT sizes).
"""

from __future__ import annotations

from typing import Any

import torch
from fastproto.kernels.reference import prototype_bias

from fastproto.vmf import log_normalizer


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _RowNorm(torch.autograd.Function):
    """||w_k|| [K] whose backward allocates one [K, D] tensor (torch.norm's allocates two)."""

    @staticmethod
    def forward(ctx: Any, protos: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(protos, dim=1)  # [K]
        ctx.save_for_backward(protos, norms)
        return norms

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        protos, norms = ctx.saved_tensors
        # d||w||/dw = w / ||w||; a zero prototype gets a zero gradient instead of nan
        return protos * torch.where(norms > 0, grad / norms, 0.0)[:, None].to(protos.dtype)


def student_bias(protos: torch.Tensor, temp: float, vmf: bool) -> torch.Tensor:
    """vMF log-normaliser of the student prototypes [K] in the compute dtype, with autograd.

    Same value as reference.prototype_bias; the norm's backward is the lean one above, because
    the streaming paths are judged on their peak memory and a [K, D] temporary is 64 MiB at
    K = 65536.
    """
    cd = compute_dtype(protos.dtype)
    if not vmf:
        return torch.zeros(protos.shape[0], dtype=cd, device=protos.device)
    kappa = _RowNorm.apply(protos).to(cd) / temp
    return log_normalizer(kappa, protos.shape[1])


def teacher_bias(
    protos: torch.Tensor, center: torch.Tensor, temp: float, vmf: bool
) -> torch.Tensor:
    """vMF log-normaliser minus the centre [K] in the compute dtype, detached."""
    with torch.no_grad():
        cd = compute_dtype(protos.dtype)
        return prototype_bias(protos.detach().to(cd), temp, vmf) - center.detach().to(cd)


def pair_table(
    targets: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher row per pair (missing -> row 0) [Ns, P] and pair weight (missing -> 0) [Ns, P]."""
    valid = targets >= 0
    rows = targets.clamp_min(0).contiguous()
    pair_w = torch.where(valid, weights.detach().to(dtype), 0.0)
    return rows, pair_w.contiguous()
