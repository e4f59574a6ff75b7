"""Backbones (timm ViTs with iBOT's masked-token input, timm CNNs) and the student/teacher network.

MaskedViT wraps timm's VisionTransformer (no pretrained weights, `dynamic_img_size` so that
global and local crops of different sizes share one position table) and adds a learnable
mask token: where `mask[b, i]` is true, patch embedding i of image b is replaced by it before
the position embedding is added (iBOT's masked image modelling input).

Backbones without patch tokens: `model.arch = "timm:<name>"` builds any timm model by name
(no pretrained weights; its pooled features are the "CLS" token), and `resnet_small_28` is a
ResNet whose stem suits 28-32 px images (a 3x3 stride-1 convolution and no max-pool, so a
28 px crop keeps 28 -> 14 -> 7 -> 4 px through its four stages). They return no patch tokens,
so iBOT, which predicts masked patch tokens, refuses them.

SSLNetwork = backbone + prototype head(s). Its forward takes the crops of one batch,
crop-major (rows c*B .. c*B+B-1 are crop c, global crops first), and returns

    cls_y        [S*B, D]   head outputs of the CLS tokens of all S = G + L crops
    patch_y      [Nm, D]    head outputs of the masked patch tokens only (gathered, DINOv2 style)
    cls_features [G*B, E]   backbone CLS tokens of the global crops (for KoLeo on data)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fastproto.masked_tokens import MaskedTokens

# name -> (embed_dim, depth, num_heads, patch_size, img_size)
ARCHS: dict[str, tuple[int, int, int, int, int]] = {
    "vit_small_patch16_224": (384, 12, 6, 16, 224),
    "vit_base_patch16_224": (768, 12, 12, 16, 224),
    "vit_tiny_patch4_32": (192, 12, 3, 4, 32),
    "vit_mini_patch4_28": (128, 6, 4, 4, 28),
    "vit_pico_patch4_28": (64, 3, 2, 4, 28),
    "vit_pico_patch7_28": (64, 3, 2, 7, 28),
}


TIMM_PREFIX = "timm:"
# name -> (block depths, channels) of the small-image ResNets
SMALL_RESNETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet_small_28": ((1, 1, 1, 1), (32, 64, 128, 256)),
}


def arch_names() -> list[str]:
    """Every built-in backbone name (timm models are named as "timm:<name>")."""
    return sorted(ARCHS) + sorted(SMALL_RESNETS)


def arch_has_patch_tokens(arch: str) -> bool:
    """Whether `arch` yields patch tokens (and so can be trained with iBOT)."""
    return arch in ARCHS


def arch_patch_size(arch: str) -> int | None:
    """The patch side of a built-in ViT; None for backbones without patch tokens."""
    return ARCHS[arch][3] if arch in ARCHS else None


def check_arch(arch: str) -> None:
    """ValueError naming the choices unless `arch` is a built-in name or "timm:<name>"."""
    if arch in ARCHS or arch in SMALL_RESNETS:
        return
    if arch.startswith(TIMM_PREFIX):
        import timm

        name = arch[len(TIMM_PREFIX) :]
        if name not in timm.list_models():
            near = timm.list_models(f"*{name}*")[:5]
            raise ValueError(f"model.arch {arch!r}: timm has no model {name!r}; close: {near}")
        return
    raise ValueError(
        f"unknown model.arch {arch!r}; choose one of {arch_names()} or a timm model as "
        "'timm:<name>' (e.g. 'timm:resnet18')"
    )


class PooledBackbone(nn.Module):
    """A backbone without patch tokens: x [B, 3, H, W] -> (pooled features [B, E], [B, 0, E])."""

    def __init__(self, model: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.model = model
        self.embed_dim = embed_dim
        self.mask_token = None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not None:
            raise ValueError("this backbone has no patch tokens to mask; train it with DINO")
        features = self.model(x)  # [B, E], timm models built with num_classes=0 pool for us
        return features, features.new_zeros(features.shape[0], 0, self.embed_dim)


def small_resnet(arch: str, drop_path: float = 0.0) -> PooledBackbone:
    """A timm ResNet with a small-image stem: 3x3 stride-1 convolution, no max-pool."""
    from timm.models.resnet import BasicBlock, ResNet

    depths, channels = SMALL_RESNETS[arch]
    model: Any = ResNet(
        BasicBlock,  # type: ignore[arg-type]  # timm annotates the class as an instance
        depths,
        num_classes=0,
        channels=channels,
        drop_path_rate=drop_path,
    )
    stem = int(model.conv1.out_channels)  # what bn1 and layer1 expect
    model.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return PooledBackbone(model, int(model.num_features))


def timm_backbone(arch: str, drop_path: float = 0.0) -> PooledBackbone:
    """Any timm model by name ("timm:<name>"), randomly initialised, classifier removed."""
    import timm

    model: Any = timm.create_model(
        arch[len(TIMM_PREFIX) :], pretrained=False, num_classes=0, drop_path_rate=drop_path
    )
    return PooledBackbone(model, int(model.num_features))


def build_backbone(arch: str, drop_path: float = 0.0, mask_token: bool = True) -> nn.Module:
    """The backbone named `arch` (see the module docstring); `mask_token` for ViTs only."""
    check_arch(arch)
    if arch in ARCHS:
        return MaskedViT(arch, drop_path=drop_path, mask_token=mask_token)
    if arch in SMALL_RESNETS:
        return small_resnet(arch, drop_path)
    return timm_backbone(arch, drop_path)


class MaskedViT(nn.Module):
    """A timm ViT whose masked patch embeddings are replaced by a learnable token."""

    def __init__(self, arch: str, drop_path: float = 0.0, mask_token: bool = True) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        embed_dim, depth, heads, patch, img = ARCHS[arch]
        self.vit = VisionTransformer(
            img_size=img,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=heads,
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path,
        )
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

    def __init__(self, backbone: nn.Module, cls_head: nn.Module, patch_head: nn.Module) -> None:
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
        masks: MaskedTokens | None = None,
        mask_input: bool = False,
    ) -> NetworkOutput:
        """global_crops [G*B, 3, H, W], local_crops [L*B, 3, h, w], masks of [G*B, H/p, W/p].

        With `masks`, the patch tokens at masked positions go through the patch head; with
        `mask_input` they are also replaced by the mask token on the way in (the student).
        """
        cls_g, patches = self.backbone(
            global_crops, masks.grid if masks is not None and mask_input else None
        )
        cls_tokens = [cls_g]
        if local_crops is not None and local_crops.shape[0] > 0:
            cls_tokens.append(self.backbone(local_crops)[0])
        cls_y = self.cls_head(torch.cat(cls_tokens))  # [S*B, D]
        patch_y = None
        if masks is not None:
            patch_y = self.patch_head(masks.gather(patches))  # [Nm, D]
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
    backbone = build_backbone(arch, drop_path=drop_path, mask_token=mask_token)
    embed_dim = int(backbone.embed_dim)  # type: ignore[arg-type]
    cls_head, patch_head = make_heads(
        embed_dim,
        num_prototypes,
        norm,
        shared_head,
        hidden_dim=hidden_dim,
        bottleneck_dim=bottleneck_dim,
        num_layers=num_layers,
    )
    return SSLNetwork(backbone, cls_head, patch_head)
