"""Batched colour operations on float RGB images in [0, 1], shapes [N, 3, H, W].

Per-sample factors are tensors [N]. The formulas are torchvision's for float images:
  grey(x)        = 0.2989 R + 0.587 G + 0.114 B                         [N, 1, H, W]
  brightness f   : clamp(f x)
  contrast f     : clamp(f x + (1 - f) mean(grey(x)))   (mean over the whole image)
  saturation f   : clamp(f x + (1 - f) grey(x))
  hue d          : RGB -> HSV, h <- (h + d) mod 1, HSV -> RGB
  solarise       : x >= t -> 1 - x
"""

from __future__ import annotations

import torch


def grey(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma."""
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(-1, 1, 1, 1)  # [N] -> [N, 1, 1, 1]


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(f)).clamp_(0.0, 1.0)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
    f = _per_sample(f)
    return (f * x + (1.0 - f) * mean).clamp_(0.0, 1.0)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_sample(f)
    return (f * x + (1.0 - f) * grey(x)).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]  # [N, H, W] each
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    spread = maxc - minc
    s = spread / maxc.clamp(min=1e-12)  # 0 where maxc == 0, since then spread == 0
    div = spread.clamp(min=1e-12)
    # Hue sector by which channel is the maximum (ties: R before G before B); grey pixels
    # (spread 0) get h = 0 because every numerator below is 0 for them.
    h_r = (g - b) / div
    h_g = 2.0 + (b - r) / div
    h_b = 4.0 + (r - g) / div
    h = torch.where(maxc == r, h_r, torch.where(maxc == g, h_g, h_b))
    h = torch.where(spread > 0, h, torch.zeros_like(h))
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    # Closed form: channel value = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6,
    # n = 5, 3, 1 for R, G, B; the same piecewise-linear map as the six-sector table.
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]  # [N, 1, H, W]
    # n = 5, 3, 1 made on the device (a torch.tensor of Python numbers is a copy from the host)
    n = (5.0 - 2.0 * torch.arange(3, dtype=hsv.dtype, device=hsv.device)).reshape(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)  # [N, 3, H, W]
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v - v * s * ramp


def hue(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    shifted = torch.remainder(hsv[:, 0] + d.reshape(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((shifted, hsv[:, 1], hsv[:, 2]), dim=1))


def solarise(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)
