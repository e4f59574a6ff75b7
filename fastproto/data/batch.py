"""The typed batch every loader backend yields.

Shapes (G global crops, L local crops, B images, H = W = global size, h = w = local size):
  global_crops  uint8 [G, B, 3, H, W]
  local_crops   uint8 [L, B, 3, h, w]   (L may be 0)
  labels        int64 [B]
  indices       int64 [B]   (positions of the images in the split)

The crop tensors are dense but need not be contiguous: the FFCV and DALI backends hand out
channels-last views of their HWC crops (no transpose on the loading thread), so reshape rather
than view them, or call `.contiguous()` where a kernel needs it.
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
    """[B, num_crops * size * size * 3] uint8 (HWC per crop) -> [num_crops, B, 3, size, size].

    The result is a permuted view of a fresh contiguous copy of `flat` (which may be a strided
    slice of a reused buffer): one plain copy instead of a transposing one, which cost the
    loading thread about 0.7 ms per image for 2 x 224 + 10 x 96 crops.
    """
    b = flat.shape[0]
    own = flat.clone(memory_format=torch.contiguous_format)  # a copy even when flat is contiguous
    hwc = own.view(b, num_crops, size, size, 3)  # [B, C, S, S, 3]
    return hwc.permute(1, 0, 4, 2, 3)  # [C, B, 3, S, S], channels-last strides
