"""DINO's projection head with a prototype layer in three modes (DINO-vMF, figure 1b).

    x [N, in_dim] -> MLP -> z [N, D] -> y = z / ||z||            (D = bottleneck_dim, default 256)
    MLP (num_layers = 3): Linear(in, h) - GELU - Linear(h, h) - GELU - Linear(h, D)

The prototype layer holds K vectors w_k in R^D, as the effective matrix W [K, D]:

    l2   : w_k = v_k / ||v_k||                 every kappa_k = 1/tau, so log C_p cancels
    free : w_k = g_k v_k / ||v_k||, g_k -> 1    DINO's weight norm with learnable g, no vMF term
    vmf  : w_k a free vector                    logit gets log C_p(||w_k|| / tau) (the loss adds it)

    logits[n, k] = <w_k, y_n> / tau  (+ log C_p(||w_k|| / tau) in vmf mode)        [N, K]

The fused loss takes y and W (never logits), so the head exposes `forward` (y) and
`prototypes` (W); `logits` materialises [N, K] for evaluation and small K.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastproto.kernels.reference import student_logits

NORMS = ("l2", "free", "vmf")
INIT_STD = 0.02


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _init_linear(layer: nn.Linear) -> None:
    # DINO's initialisation: truncated normal, std 0.02 (cut at two standard deviations), zero bias.
    nn.init.trunc_normal_(layer.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def build_mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, num_layers: int) -> nn.Sequential:
    """Linear-GELU-...-Linear with `num_layers` linear layers, ending at the bottleneck."""
    widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
    layers: list[nn.Module] = []
    for i in range(num_layers):
        linear = nn.Linear(widths[i], widths[i + 1])
        _init_linear(linear)
        layers.append(linear)
        if i < num_layers - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def _random_unit_rows(rows: int, cols: int) -> torch.Tensor:
    """[rows, cols] with rows drawn uniformly on the unit sphere."""
    return F.normalize(torch.randn(rows, cols), dim=1)


class PrototypeHead(nn.Module):
    """MLP -> L2-normalised bottleneck y [N, D]; prototypes W [K, D] in mode `norm`."""

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int,
        norm: str = "vmf",
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        _check_int("in_dim", in_dim, 2)
        _check_int("num_prototypes", num_prototypes, 1)
        _check_int("hidden_dim", hidden_dim, 2)
        _check_int("bottleneck_dim", bottleneck_dim, 2)
        _check_int("num_layers", num_layers, 1)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.in_dim = in_dim
        self.norm = norm
        self.mlp = build_mlp(in_dim, hidden_dim, bottleneck_dim, num_layers)
        # Unit rows in every mode. l2/free: only the direction of v matters, and unit length
        # keeps the gradient through v / ||v|| at its natural scale; free then starts at g = 1,
        # DINO's weight-norm start. vmf: ||w_k|| = 1 gives kappa_k = 1/tau (10 for tau = 0.1,
        # 25 for tau = 0.04), where log C_p is finite and equal for all k, so the head starts
        # out as the l2 head and the norms learn from there.
        self.prototype_weight = nn.Parameter(_random_unit_rows(num_prototypes, bottleneck_dim))
        gain = nn.Parameter(torch.ones(num_prototypes)) if norm == "free" else None
        self.prototype_gain: nn.Parameter | None
        self.register_parameter("prototype_gain", gain)

    @property
    def vmf(self) -> bool:
        """Whether the loss adds log C_p(||w_k|| / tau) to the logits."""
        return self.norm == "vmf"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_dim] -> y [..., D] with ||y|| = 1."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"input has {x.shape[-1]} features in its last dimension, the head expects "
                f"in_dim={self.in_dim}; build the head with the backbone's embedding size"
            )
        return F.normalize(self.mlp(x), dim=-1)

    def prototypes(self) -> torch.Tensor:
        """Effective W [K, D], as the loss must use it."""
        if self.norm == "vmf":
            return self.prototype_weight
        direction = F.normalize(self.prototype_weight, dim=1)  # [K, D]
        if self.prototype_gain is None:
            return direction
        return self.prototype_gain[:, None] * direction

    def logits(self, y: torch.Tensor, temp: float) -> torch.Tensor:
        """Materialised logits [N, K] for evaluation and small K (y from `forward`)."""
        if not temp > 0:
            raise ValueError(f"temp must be > 0, got {temp}")
        protos = self.prototypes()
        if y.dim() != 2 or y.shape[1] != protos.shape[1]:
            raise ValueError(
                f"y must be [N, {protos.shape[1]}] (the head's bottleneck output), "
                f"got shape {tuple(y.shape)}"
            )
        return student_logits(y, protos, temp, self.vmf)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The prototype layer's parameters (DINO freezes them during the first epoch)."""
        params = [self.prototype_weight]
        if self.prototype_gain is not None:
            params.append(self.prototype_gain)
        return params


def make_heads(
    in_dim: int,
    num_prototypes: int,
    norm: str,
    shared: bool,
    patch_prototypes: int | None = None,
    **kwargs: Any,
) -> tuple[PrototypeHead, PrototypeHead]:
    """(CLS head, patch head) for iBOT; `shared` returns one module twice.

    `patch_prototypes` (default: `num_prototypes`) sizes the separate patch head; a shared
    head has a single prototype layer, so it must then be None or equal to `num_prototypes`.
    """
    if not isinstance(shared, bool):
        raise ValueError(f"shared must be True or False, got {shared!r}")
    if shared:
        if patch_prototypes is not None and patch_prototypes != num_prototypes:
            raise ValueError(
                f"a shared head has one prototype layer, but patch_prototypes="
                f"{patch_prototypes} differs from num_prototypes={num_prototypes}; "
                "pass shared=False or drop patch_prototypes"
            )
        head = PrototypeHead(in_dim, num_prototypes, norm, **kwargs)
        return head, head
    patch_k = num_prototypes if patch_prototypes is None else patch_prototypes
    cls_head = PrototypeHead(in_dim, num_prototypes, norm, **kwargs)
    patch_head = PrototypeHead(in_dim, patch_k, norm, **kwargs)
    return cls_head, patch_head
