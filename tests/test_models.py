"""The masked-token ViT and the student/teacher network around it."""

from __future__ import annotations

import pytest
import torch

from fastproto.config import TrainConfig
from fastproto.masked_tokens import MaskedTokens
from fastproto.models import ARCHS, MaskedViT, build_network


def test_shapes_for_global_and_local_crops() -> None:
    vit = MaskedViT("vit_pico_patch4_28")
    cls, patches = vit(torch.randn(3, 3, 28, 28))
    assert cls.shape == (3, 64) and patches.shape == (3, 49, 64)
    cls, patches = vit(torch.randn(2, 3, 12, 12))  # local crops: position table resampled
    assert cls.shape == (2, 64) and patches.shape == (2, 9, 64)


def test_fully_masked_input_ignores_the_image() -> None:
    """With every patch replaced by the mask token, the image content cannot reach the output."""
    vit = MaskedViT("vit_pico_patch4_28").eval()
    with torch.no_grad():
        vit.mask_token.normal_()
    mask = torch.ones(2, 7, 7, dtype=torch.bool)
    a = vit(torch.randn(2, 3, 28, 28), mask)
    b = vit(torch.randn(2, 3, 28, 28), mask)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    unmasked = vit(torch.randn(2, 3, 28, 28))
    assert not torch.allclose(unmasked[0], a[0], atol=1e-3)


def test_mask_changes_only_through_masked_positions() -> None:
    """Changing pixels of a masked patch leaves the output unchanged; an unmasked one does not."""
    vit = MaskedViT("vit_pico_patch4_28").eval()
    x = torch.randn(1, 3, 28, 28)
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 0, 0] = True  # the top-left 4x4 patch
    y = x.clone()
    y[..., :4, :4] += 5.0
    z = x.clone()
    z[..., 4:8, 4:8] += 5.0
    with torch.no_grad():
        base, same, other = vit(x, mask)[0], vit(y, mask)[0], vit(z, mask)[0]
    assert torch.allclose(base, same, atol=1e-6)
    assert not torch.allclose(base, other, atol=1e-3)


def test_network_gathers_only_masked_patch_tokens() -> None:
    net = build_network("vit_pico_patch4_28", 16, "vmf", True, hidden_dim=32, bottleneck_dim=8)
    mask = torch.rand(4, 7, 7) < 0.3
    masks = MaskedTokens.from_grid(mask)
    out = net(torch.randn(4, 3, 28, 28), torch.randn(6, 3, 12, 12), masks, mask_input=True)
    assert out.cls_y.shape == (10, 8)  # 4 global + 6 local crops
    assert out.patch_y is not None and out.patch_y.shape == (int(mask.sum()), 8)
    assert torch.allclose(out.cls_y.norm(dim=1), torch.ones(10), atol=1e-5)
    assert out.cls_features.shape == (4, 64)
    assert net.patch_head is net.cls_head and len(net.heads()) == 1


def test_separate_heads_are_both_registered() -> None:
    net = build_network("vit_pico_patch4_28", 16, "l2", False, hidden_dim=32, bottleneck_dim=8)
    assert net.patch_head is not net.cls_head and len(net.heads()) == 2
    names = {n.split(".")[0] for n, _ in net.named_parameters()}
    assert names == {"backbone", "cls_head", "patch_head_separate"}


def test_bad_arch_and_k_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown arch 'vit_huge'.*vit_pico_patch4_28"):
        MaskedViT("vit_huge")
    with pytest.raises(ValueError, match="K must be >= 1"):
        build_network("vit_pico_patch4_28", 0, "vmf", True)
    with pytest.raises(ValueError, match="without a mask token"):
        MaskedViT("vit_pico_patch4_28", mask_token=False)(
            torch.randn(1, 3, 28, 28), torch.ones(1, 7, 7, dtype=torch.bool)
        )


def test_arch_table_matches_timm_vit_small() -> None:
    """Our ViT-S/16 has the parameter count of timm's vit_small_patch16_224 (21.7 M, no head)."""
    import timm

    ours = MaskedViT("vit_small_patch16_224", mask_token=False)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert ARCHS["vit_small_patch16_224"][:3] == (384, 12, 6)


@pytest.mark.parametrize("arch", ["resnet_small_28", "timm:resnet10t"])
def test_cnn_backbones_give_pooled_features_and_no_patch_tokens(arch: str) -> None:
    net = build_network(arch, 16, "vmf", True, mask_token=False, hidden_dim=32, bottleneck_dim=8)
    out = net(torch.randn(3, 3, 28, 28), torch.randn(6, 3, 12, 12))
    assert out.cls_y.shape == (9, 8) and out.cls_features.shape[0] == 3
    _, patches = net.backbone(torch.randn(2, 3, 32, 32))
    assert patches.shape[:2] == (2, 0)
    with pytest.raises(ValueError, match="no patch tokens to mask"):
        net.backbone(torch.randn(2, 3, 28, 28), torch.zeros(2, 7, 7, dtype=torch.bool))


def test_small_resnet_keeps_resolution_through_its_stem() -> None:
    from fastproto.models import small_resnet

    resnet = small_resnet("resnet_small_28").model
    stem = resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(torch.randn(1, 3, 28, 28)))))
    assert stem.shape[-2:] == (28, 28)  # timm's stem would give 7 x 7


def test_prototype_matrix_decays_on_the_schedule_its_mode_names() -> None:
    from fastproto.train.setup import param_groups
    from fastproto.train.step import set_schedule
    from fastproto.train.values import step_values

    net = build_network("vit_pico_patch4_28", 16, "vmf", True, hidden_dim=32, bottleneck_dim=8)
    protos = net.cls_head.prototype_weight
    config = TrainConfig()
    config.optim.weight_decay, config.optim.weight_decay_end = 0.3, 0.3
    config.optim.prototype_weight_decay, config.optim.prototype_weight_decay_end = 2.0, 2.0
    values = step_values(config, 5, 10)
    for mode, expected in (("network", 0.3), ("none", 0.0), ("own", 2.0)):
        optimizer = torch.optim.AdamW(param_groups(net, mode), lr=0.0)
        set_schedule(optimizer, values)
        holding = [g for g in optimizer.param_groups if any(p is protos for p in g["params"])]
        assert len(holding) == 1 and holding[0]["weight_decay"] == expected, mode
        others = [g["weight_decay"] for g in optimizer.param_groups if g is not holding[0]]
        assert 0.3 in others or mode == "network"  # the network keeps its own schedule
    with pytest.raises(ValueError, match="'network', 'none' or 'own'"):
        param_groups(net, "off")
