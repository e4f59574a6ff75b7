"""The typed batch every loader backend yields.

Shapes (G global crops, L local crops, B images, H = W = global size, h = w = local size):
  global_crops  uint8 [G, B, 3, H, W]
  local_crops   uint8 [L, B, 3, h, w]   (L may be 0)
  labels        int64 [B]
  indices       int64 [B]   (positions of the images in the split)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """Multi-crop uint8 crops of B images with their labels and split indices."""

    global_crops: torch.Tensor
    local_crops: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """The same batch on `device` (tensors are copied only if they are elsewhere)."""
        return Batch(
            self.global_crops.to(device, non_blocking=non_blocking),
            self.local_crops.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
        )


def crops_from_hwc(flat: torch.Tensor, num_crops: int, size: int) -> torch.Tensor:
    """[B, num_crops * size * size * 3] uint8 (HWC per crop) -> [num_crops, B, 3, size, size]."""
    b = flat.shape[0]
    hwc = flat.reshape(b, num_crops, size, size, 3)  # [B, C, S, S, 3]
    return hwc.permute(1, 0, 4, 2, 3).contiguous()  # [C, B, 3, S, S]
