"""Which patch tokens iBOT predicts: the block masks and, made beside them, their flat indices.

    grid         bool  [N, h, w]  true where the student sees the mask token (N = G*B crops)
    token_index  int64 [Nm]       row of each masked token in the patch tokens flattened to [N*h*w]
    image_index  int64 [Nm]       the crop each masked token belongs to, in [0, N - 1]

The number of masked tokens Nm depends on the masks' values. Finding them on the device
(`patches[grid]`, `grid.nonzero()`) makes the host wait for the device to say how many there
are, and the backward of a boolean gather waits again; the masks are drawn on the host, so the
indices are made there, where reading them costs nothing, and go to the device with the grid
(fastproto.device_copy). With the indices the gather is `index_select` and its backward `index_add`:
no host sync in the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastproto.device_copy import to_device_async


@dataclass(frozen=True)
class MaskedTokens:
    grid: torch.Tensor  # bool [N, h, w]
    token_index: torch.Tensor  # int64 [Nm]
    image_index: torch.Tensor  # int64 [Nm]

    @classmethod
    def from_grid(cls, grid: torch.Tensor) -> MaskedTokens:
        """The indices of `grid` bool [N, h, w], made where `grid` is (draw it on the host)."""
        if grid.dtype != torch.bool or grid.dim() != 3:
            raise ValueError(
                f"masks must be bool [N, h, w] (one patch grid per global crop), got "
                f"{grid.dtype} {tuple(grid.shape)}"
            )
        flat = grid.reshape(-1).nonzero().squeeze(1)  # [Nm], row-major over (crop, token)
        tokens_per_image = grid.shape[1] * grid.shape[2]
        return cls(grid, flat, torch.div(flat, tokens_per_image, rounding_mode="floor"))

    @property
    def num_images(self) -> int:
        return self.grid.shape[0]

    def to(self, device: torch.device | str) -> MaskedTokens:
        """The same masks on `device`; the copies from the host are queued, not waited for."""
        parts = (self.grid, self.token_index, self.image_index)
        return MaskedTokens(*(to_device_async(t, device) for t in parts))

    def gather(self, patches: torch.Tensor) -> torch.Tensor:
        """The masked tokens of `patches` [N, h*w, E] -> [Nm, E], in token_index order."""
        if patches.dim() != 3 or patches.shape[:2] != (self.num_images, self.grid[0].numel()):
            raise ValueError(
                f"patch tokens {tuple(patches.shape)} do not match the masks "
                f"{tuple(self.grid.shape)}: expected [{self.num_images}, "
                f"{self.grid[0].numel()}, E]"
            )
        return patches.flatten(0, 1).index_select(0, self.token_index)
