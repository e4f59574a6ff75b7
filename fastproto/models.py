"""Backbones (timm ViTs with iBOT's masked-token input) and the student/teacher network.

MaskedViT wraps timm's VisionTransformer (no pretrained weights, `dynamic_img_size` so that
global and local crops of different sizes share one position table) and adds a learnable
mask token: where `mask[b, i]` is true, patch embedding i of image b is replaced by it before
the position embedding is added (iBOT's masked image modelling input).

SSLNetwork = backbone + prototype head(s). Its forward takes the crops of one batch,
crop-major (rows c*B .. c*B+B-1 are crop c, global crops first), and returns

    cls_y        [S*B, D]   head outputs of the CLS tokens of all S = G + L crops
    patch_y      [Nm, D]    head outputs of the masked patch tokens only (gathered, DINOv2 style)
    cls_features [G*B, E]   backbone CLS tokens of the global crops (for KoLeo on data)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# name -> (embed_dim, depth, num_heads, patch_size, img_size)
ARCHS: dict[str, tuple[int, int, int, int, int]] = {
    "vit_small_patch16_224": (384, 12, 6, 16, 224),
    "vit_base_patch16_224": (768, 12, 12, 16, 224),
    "vit_tiny_patch4_32": (192, 12, 3, 4, 32),
    "vit_mini_patch4_28": (128, 6, 4, 4, 28),
    "vit_pico_patch4_28": (64, 3, 2, 4, 28),
}


class MaskedViT(nn.Module):
    """A timm ViT whose masked patch embeddings are replaced by a learnable token."""

    def __init__(self, arch: str, drop_path: float = 0.0, mask_token: bool = True) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        embed_dim, depth, heads, patch, img = ARCHS[arch]
        self.vit = VisionTransformer(
            img_size=img, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=heads,
            num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path,
        )  # fmt: skip
        self.embed_dim = embed_dim
        self.patch_size = patch
        self.img_size = img
        # iBOT starts the mask token at zero; only the student with masking needs one.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, embed_dim)) if mask_token else None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, H, W], mask bool [B, H/p, W/p] -> (cls [B, E], patch tokens [B, T, E])."""
        tokens = self.vit.patch_embed(x)  # [B, h, w, E] (dynamic size keeps the grid)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this backbone was built without a mask token; pass mask=None")
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = self.vit._pos_embed(tokens)  # [B, 1 + T, E]
        tokens = self.vit.norm_pre(tokens)
        tokens = self.vit.norm(self.vit.blocks(tokens))
        prefix = self.vit.num_prefix_tokens
        return tokens[:, 0], tokens[:, prefix:]


def head_prototypes(head: nn.Module) -> torch.Tensor:
    """The prototype matrix W [K, D] of a fastproto.head.PrototypeHead."""
    weights: torch.Tensor = head.prototypes()  # type: ignore[operator]
    return weights


def head_is_vmf(head: nn.Module) -> bool:
    return bool(head.vmf)


def head_last_layer(head: nn.Module) -> list[nn.Parameter]:
    """The parameters frozen during the first epochs (DINO's freeze_last_layer)."""
    return list(head.last_layer_parameters())  # type: ignore[operator]


@dataclass
class NetworkOutput:
    cls_y: torch.Tensor  # [S*B, D]
    patch_y: torch.Tensor | None  # [Nm, D], None without masks
    cls_features: torch.Tensor  # [G*B, E]


class SSLNetwork(nn.Module):
    """Backbone plus the CLS head and the patch head (the same module when shared)."""

    def __init__(self, backbone: MaskedViT, cls_head: nn.Module, patch_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head
        self.shared = patch_head is cls_head
        # Registered once when shared, so state_dict and parameters() hold it once.
        self.patch_head_separate = None if self.shared else patch_head

    @property
    def patch_head(self) -> nn.Module:
        return self.cls_head if self.patch_head_separate is None else self.patch_head_separate

    def heads(self) -> list[nn.Module]:
        return [self.cls_head] if self.shared else [self.cls_head, self.patch_head]

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_input: bool = False,
    ) -> NetworkOutput:
        """global_crops [G*B, 3, H, W], local_crops [L*B, 3, h, w], masks bool [G*B, H/p, W/p].

        With `masks`, the patch tokens at masked positions go through the patch head; with
        `mask_input` they are also replaced by the mask token on the way in (the student).
        """
        cls_g, patches = self.backbone(global_crops, masks if mask_input else None)
        cls_tokens = [cls_g]
        if local_crops is not None and local_crops.shape[0] > 0:
            cls_tokens.append(self.backbone(local_crops)[0])
        cls_y = self.cls_head(torch.cat(cls_tokens))  # [S*B, D]
        patch_y = None
        if masks is not None:
            patch_y = self.patch_head(patches[masks.flatten(1)])  # [Nm, D]
        return NetworkOutput(cls_y=cls_y, patch_y=patch_y, cls_features=cls_g)


def build_network(
    arch: str,
    num_prototypes: int,
    norm: str,
    shared_head: bool,
    drop_path: float = 0.0,
    mask_token: bool = True,
    hidden_dim: int = 2048,
    bottleneck_dim: int = 256,
    num_layers: int = 3,
) -> SSLNetwork:
    """A student or teacher network; the teacher is built with drop_path=0."""
    from fastproto.head import make_heads

    if num_prototypes < 1:
        raise ValueError(f"the number of prototypes K must be >= 1, got {num_prototypes}")
    backbone = MaskedViT(arch, drop_path=drop_path, mask_token=mask_token)
    cls_head, patch_head = make_heads(
        backbone.embed_dim, num_prototypes, norm, shared_head,
        hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, num_layers=num_layers,
    )  # fmt: skip
    return SSLNetwork(backbone, cls_head, patch_head)
