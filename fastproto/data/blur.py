"""Batched Gaussian blur with a different sigma per sample.

Kernel (size k odd, radius r = k // 2), i = -r..r:
    g_i = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)),
applied separably (rows, then columns) with reflect padding, as torchvision's
gaussian_blur does. Per-sample kernels become one grouped convolution: the batch of
[N, 3, H, W] is viewed as [1, 3N, H, W] with 3N groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blur_kernel_size(crop_size: int, fraction: float = 0.1) -> int:
    """Odd kernel of about `fraction` of the crop side (0.1: 23 for 224, 9 for 96), at least 3."""
    return max(3, 2 * int(crop_size * fraction / 2) + 1)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """[N] sigmas -> [N, size] normalised 1-D kernels."""
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(-(offsets[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))  # [N, k]
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Blur each image of [N, C, H, W] with its own sigma [N] and kernel side `size`."""
    n, c, h, w = x.shape
    radius = size // 2
    kernels = gaussian_kernels(sigma.to(x.dtype), size).repeat_interleave(c, dim=0)  # [NC, k]
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.reshape(n * c, 1, 1, size), groups=n * c)
    flat = F.conv2d(flat, kernels.reshape(n * c, 1, size, 1), groups=n * c)
    return flat.reshape(n, c, h, w)
