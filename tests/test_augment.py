"""Device augmentation: every op against torchvision.transforms.v2.functional on single images."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastproto.data import color
from fastproto.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    MultiCropAugment,
    apply_params,
    sample_params,
)
from fastproto.data.blur import blur_kernel_size, gaussian_blur

TOL = dict(atol=2e-5, rtol=0)


def _images(n: int = 5, size: int = 20) -> torch.Tensor:
    x = torch.rand(n, 3, size, size)
    x[0] = 0.5  # a flat grey image (zero saturation, undefined hue)
    x[1, :, :4] = 1.0  # saturated white rows
    return x


@pytest.mark.parametrize(
    "ours,theirs,lo,hi",
    [
        (color.brightness, TF.adjust_brightness, 0.6, 1.4),
        (color.contrast, TF.adjust_contrast, 0.6, 1.4),
        (color.saturation, TF.adjust_saturation, 0.8, 1.2),
        (color.hue, TF.adjust_hue, -0.1, 0.1),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, lo, hi) -> None:  # type: ignore[no-untyped-def]
    x = _images()
    f = lo + (hi - lo) * torch.rand(len(x))
    got = ours(x.clone(), f)
    want = torch.stack([theirs(img, float(v)) for img, v in zip(x, f, strict=True)])
    torch.testing.assert_close(got, want, **TOL)


def test_grey_solarise_flip_match_torchvision() -> None:
    x = _images()
    torch.testing.assert_close(color.grey(x).expand_as(x), TF.rgb_to_grayscale(x, 3), **TOL)
    torch.testing.assert_close(color.solarise(x, 0.5), TF.solarize(x, 0.5), **TOL)


@pytest.mark.parametrize("size", [12, 96, 224])
def test_blur_matches_torchvision_per_sigma(size: int) -> None:
    k = blur_kernel_size(size)
    assert k % 2 == 1 and k >= 3
    x = torch.rand(3, 3, size, size)
    sigma = torch.tensor([0.1, 0.9, 2.0])
    got = gaussian_blur(x, sigma, k)
    want = torch.stack(
        [
            TF.gaussian_blur(img, [k, k], [float(s), float(s)])
            for img, s in zip(x, sigma, strict=True)
        ]
    )
    torch.testing.assert_close(got, want, **TOL)


def _reference(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """DINO's pipeline one image at a time with torchvision's functional ops."""
    out = []
    k = blur_kernel_size(x.shape[-1])
    for i, img in enumerate(x):
        if p.flip[i]:
            img = TF.horizontal_flip(img)
        if p.jitter[i]:
            img = TF.adjust_brightness(img, float(p.brightness[i]))
            img = TF.adjust_contrast(img, float(p.contrast[i]))
            img = TF.adjust_saturation(img, float(p.saturation[i]))
            img = TF.adjust_hue(img, float(p.hue[i]))
        if p.grey[i]:
            img = TF.rgb_to_grayscale(img, 3)
        if p.blur[i]:
            img = TF.gaussian_blur(img, [k, k], [float(p.sigma[i])] * 2)
        if p.solarise[i]:
            img = TF.solarize(img, 128 / 255)
        out.append(img)
    return torch.stack(out)


def test_apply_params_matches_sequential_torchvision() -> None:
    x = torch.rand(24, 3, 16, 16)
    p = sample_params(24, 0.5, 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(apply_params(x, p), _reference(x, p), atol=1e-4, rtol=0)


def test_module_wiring_and_determinism() -> None:
    g_crops = torch.randint(0, 256, (2, 3, 3, 24, 24), dtype=torch.uint8)
    l_crops = torch.randint(0, 256, (4, 3, 3, 12, 12), dtype=torch.uint8)
    aug = MultiCropAugment()
    out_g, out_l = aug(g_crops, l_crops, torch.Generator().manual_seed(5))
    assert out_g.shape == g_crops.shape and out_l.shape == l_crops.shape
    assert out_g.dtype == torch.float32
    # The same draws, in the module's order: global 1, global 2, then all local crops.
    gen = torch.Generator().manual_seed(5)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    for crop, (blur_p, sol_p) in enumerate([(1.0, 0.0), (0.1, 0.2)]):
        p = sample_params(3, blur_p, sol_p, gen)
        want = (_reference(g_crops[crop].float() / 255, p) - mean) / std
        torch.testing.assert_close(out_g[crop], want, atol=1e-4, rtol=0)
    p = sample_params(12, 0.5, 0.0, gen)
    want = (_reference(l_crops.reshape(12, 3, 12, 12).float() / 255, p) - mean) / std
    torch.testing.assert_close(out_l.reshape(12, 3, 12, 12), want, atol=1e-4, rtol=0)
    again_g, again_l = aug(g_crops, l_crops, torch.Generator().manual_seed(5))
    assert torch.equal(again_g, out_g) and torch.equal(again_l, out_l)
    other_g, _ = aug(g_crops, l_crops, torch.Generator().manual_seed(6))
    assert not torch.equal(other_g, out_g)


def test_probabilities_and_ranges() -> None:
    n = 40000
    p = sample_params(n, 0.1, 0.2, torch.Generator().manual_seed(0))
    for flag, rate in [
        (p.flip, 0.5),
        (p.jitter, 0.8),
        (p.grey, 0.2),
        (p.blur, 0.1),
        (p.solarise, 0.2),
    ]:
        assert abs(flag.float().mean().item() - rate) < 0.01
    ranges = [
        (p.brightness, 0.6, 1.4),
        (p.contrast, 0.6, 1.4),
        (p.saturation, 0.8, 1.2),
        (p.hue, -0.1, 0.1),
        (p.sigma, 0.1, 2.0),
    ]
    for values, lo, hi in ranges:
        assert values.min() >= lo and values.max() <= hi
        assert abs(values.mean().item() - (lo + hi) / 2) < 0.01 * (hi - lo)
    always = sample_params(1000, 1.0, 0.0, torch.Generator().manual_seed(0))
    assert always.blur.all() and not always.solarise.any()


def test_rejects_non_uint8_crops() -> None:
    with pytest.raises(ValueError, match="uint8"):
        MultiCropAugment()(torch.rand(2, 1, 3, 8, 8), torch.zeros(0, 1, 3, 4, 4))


def test_settings_set_the_strengths_and_probabilities() -> None:
    from fastproto.config import AugmentConfig

    a = AugmentConfig(
        flip_p=0.0, jitter_p=1.0, brightness=0.1, hue=0.0, grey_p=1.0, blur_sigma=(0.3, 0.5)
    )
    p = sample_params(5000, 1.0, 0.0, torch.Generator().manual_seed(0), a)
    assert not p.flip.any() and p.jitter.all() and p.grey.all()
    assert p.brightness.min() >= 0.9 and p.brightness.max() <= 1.1
    assert (p.hue == 0).all() and p.sigma.min() >= 0.3 and p.sigma.max() <= 0.5


def test_blur_and_solarise_per_crop_kind_and_kernel_fraction() -> None:
    from fastproto.config import AugmentConfig

    crops = torch.randint(0, 256, (2, 4, 3, 20, 20), dtype=torch.uint8)
    local = torch.randint(0, 256, (2, 4, 3, 10, 10), dtype=torch.uint8)
    plain = dict(flip_p=0.0, jitter_p=0.0, grey_p=0.0)
    off = MultiCropAugment(
        AugmentConfig(**plain, blur_p=(0.0, 0.0, 0.0), solarise_p=(0.0, 0.0, 0.0))
    )  # type: ignore[arg-type]
    g, l_out = off(crops, local)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    torch.testing.assert_close(g[0], (crops[0].float() / 255 - mean) / std)  # untouched
    torch.testing.assert_close(l_out[1], (local[1].float() / 255 - mean) / std)
    local_only = MultiCropAugment(
        AugmentConfig(**plain, blur_p=(0.0, 0.0, 1.0), solarise_p=(0.0, 1.0, 0.0))
    )  # type: ignore[arg-type]
    g2, l2 = local_only(crops, local)
    torch.testing.assert_close(g2[0], g[0])  # global crop 1: neither
    assert not torch.allclose(g2[1], g[1]) and not torch.allclose(l2, l_out)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 9  # DINO's sizes at 0.1
    assert blur_kernel_size(96, 0.25) == 25 and blur_kernel_size(28, 0.01) == 3
