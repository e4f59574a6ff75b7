"""DINO's multi-crop photometric augmentation, batched on the device.

For every crop, independently (p = probability, U = uniform); the numbers are DINO's, the
defaults of `fastproto.config.AugmentConfig` (the `augment` section), which sets each of them:
  1. horizontal flip                               p 0.5                       (flip_p)
  2. colour jitter                                  p 0.8 (jitter_p), in DINO's fixed order:
       brightness f ~ U(0.6, 1.4), contrast f ~ U(0.6, 1.4),
       saturation f ~ U(0.8, 1.2), hue d ~ U(-0.1, 0.1)
     (torchvision's ColorJitter shuffles the four per call; we keep this one order)
  3. greyscale                                      p 0.2                       (grey_p)
  4. Gaussian blur, sigma ~ U(0.1, 2.0)             p 1.0 (global crop 1), 0.1 (global crop 2),
     (blur_sigma; kernel ~ crop side / 10,          0.5 (local crops)           (blur_p)
      blur_kernel_fraction)
  5. solarise (x >= 128/255 -> 1 - x)               p 0.2 on global crop 2 only (solarise_p)
  6. normalise with ImageNet mean and std
Global crop g uses the "crop 1" settings for even g and the "crop 2" settings for odd g.
Small images want less: a 3-tap kernel with sigma up to 2 on a 28 px crop is nearly a box blur.
Every random quantity is drawn up front from one torch.Generator into `AugmentParams`
([N] tensors), then applied with whole-batch tensor ops; the same generator state gives
the same augmentation on any device. Input uint8 [N, 3, H, W]; output float32, normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastproto.config import AugmentConfig
from fastproto.data import color
from fastproto.data.blur import blur_kernel_size, gaussian_blur
from fastproto.device_copy import to_device_async

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOLARISE_THRESHOLD = 128 / 255


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample draws for N crops (bool or float tensors [N], on the CPU)."""

    flip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grey: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarise: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> AugmentParams:
        """The draws on `device`, the float ones in `dtype`; the copies from the host are
        queued, not waited for (a blocking copy each made the host wait ~10 times per crop
        group on a GPU)."""
        moved = {}
        for name, t in vars(self).items():
            t = t if t.dtype == torch.bool else t.to(dtype)
            moved[name] = to_device_async(t, device)
        return AugmentParams(**moved)


def sample_params(
    n: int,
    blur_p: float,
    solarise_p: float,
    generator: torch.Generator | None = None,
    settings: AugmentConfig | None = None,
) -> AugmentParams:
    """Draw the parameters of N crops from `generator` (see the module docstring); `settings`
    gives the strengths and the flip/jitter/grey probabilities (default: DINO's)."""
    a = settings or AugmentConfig()

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) < p

    b, c, s, h = a.brightness, a.contrast, a.saturation, a.hue
    return AugmentParams(
        flip=coin(a.flip_p),
        jitter=coin(a.jitter_p),
        brightness=u(1 - b, 1 + b),
        contrast=u(1 - c, 1 + c),
        saturation=u(1 - s, 1 + s),
        hue=u(-h, h),
        grey=coin(a.grey_p),
        blur=coin(blur_p),
        sigma=u(*a.blur_sigma),
        solarise=coin(solarise_p),
    )


def _where(on: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(on.reshape(-1, 1, 1, 1), new, old)


def apply_params(x: torch.Tensor, p: AugmentParams, kernel_fraction: float = 0.1) -> torch.Tensor:
    """Apply steps 1-5 to float RGB x [N, 3, H, W] in [0, 1] (no normalisation)."""
    # whether any crop is blurred or solarised, read from the host draws: no device sync
    any_blur, any_solarise = bool(p.blur.any()), bool(p.solarise.any())
    p = p.to(x.device, x.dtype)
    x = _where(p.flip, x.flip(-1), x)
    jit = color.hue(
        color.saturation(
            color.contrast(color.brightness(x, p.brightness), p.contrast), p.saturation
        ),
        p.hue,
    )
    x = _where(p.jitter, jit, x)
    x = _where(p.grey, color.grey(x).expand_as(x), x)
    if any_blur:
        x = _where(
            p.blur, gaussian_blur(x, p.sigma, blur_kernel_size(x.shape[-1], kernel_fraction)), x
        )
    if any_solarise:
        x = _where(p.solarise, color.solarise(x, SOLARISE_THRESHOLD), x)
    return x


class MultiCropAugment(nn.Module):
    """uint8 crops [C, B, 3, S, S] -> augmented, normalised float32 crops of the same shape."""

    def __init__(self, settings: AugmentConfig | None = None) -> None:
        super().__init__()
        self.settings = settings or AugmentConfig()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def _crops(
        self,
        crops: torch.Tensor,
        blur_p: float,
        solarise_p: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"expected uint8 crops [B, 3, S, S], got {crops.dtype} {crops.shape}")
        params = sample_params(crops.shape[0], blur_p, solarise_p, generator, self.settings)
        x = apply_params(crops.float().div_(255.0), params, self.settings.blur_kernel_fraction)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")  # [1, 3, 1, 1]
        return (x - mean.to(x.device)) / std.to(x.device)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment [G, B, 3, H, W] and [L, B, 3, h, w] uint8 crops (L may be 0)."""
        blur, solarise = self.settings.blur_p, self.settings.solarise_p
        globals_out = [
            self._crops(c, blur[g % 2], solarise[g % 2], generator)
            for g, c in enumerate(global_crops)
        ]
        out_global = torch.stack(globals_out)
        if local_crops.shape[0] == 0:
            return out_global, local_crops.float()
        num_local, b = local_crops.shape[:2]
        flat = local_crops.reshape(num_local * b, *local_crops.shape[2:])
        out_local = self._crops(flat, blur[2], solarise[2], generator).reshape(local_crops.shape)
        return out_global, out_local
