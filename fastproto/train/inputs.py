"""From a loader Batch to the step's inputs: augmented float crops and iBOT block masks.

Batch.global_crops uint8 [G, B, 3, H, W]  ->  global_crops float [G*B, 3, H, W]  (crop-major)
Batch.local_crops  uint8 [L, B, 3, h, w]  ->  local_crops  float [L*B, 3, h, w]  (or None)
iBOT: masks, MaskedTokens of [G*B, H/p, W/p], one block mask per global crop (none for DINO)
"""

from __future__ import annotations

import torch

from fastproto.config import TrainConfig
from fastproto.data.base import Loader
from fastproto.data.batch import Batch
from fastproto.data.recipe import MultiCropRecipe
from fastproto.masked_tokens import MaskedTokens
from fastproto.models import arch_patch_size
from fastproto.train.distributed import DistInfo


def crop_recipe(config: TrainConfig) -> MultiCropRecipe:
    d = config.data
    return MultiCropRecipe(
        num_global=d.global_crops,
        global_size=d.global_size,
        global_scale=d.global_scale,
        num_local=d.local_crops,
        local_size=d.local_size,
        local_scale=d.local_scale,
        resize=d.resize,
    )


def per_rank_batch(config: TrainConfig, world_size: int) -> int:
    batch = config.optim.batch_size
    if batch % world_size:
        raise ValueError(
            f"optim.batch_size={batch} is the global batch and must divide evenly over "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    return batch // world_size


def make_train_loader(config: TrainConfig, dist: DistInfo, split: str = "train") -> Loader:
    """This rank's shard of the training split, batches on this process's device."""
    from fastproto.data.loader import make_loader, resolve_workers

    if not config.data.path:
        raise ValueError("data.path is empty: pass --data PATH (or run the demo without --data)")
    batch = per_rank_batch(config, dist.world_size)
    loader = make_loader(
        config.data.path,
        config.data.backend,
        batch,
        crop_recipe(config),
        split=split,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=config.run.seed,
        workers=resolve_workers(config.data.workers),
        device=dist.device,
    )
    if len(loader) == 0:  # drop_last: a split smaller than one batch would train nothing
        raise ValueError(
            f"the {split} split of {config.data.path} has {loader.num_images} images, fewer than "
            f"one batch (optim.batch_size={config.optim.batch_size} over {dist.world_size} "
            f"process(es)); lower --batch-size to at most {loader.num_images} or add images"
        )
    return loader


class InputMaker:
    """Augments a batch on the device and draws the iBOT masks for its global crops."""

    def __init__(self, config: TrainConfig, dist: DistInfo) -> None:
        from fastproto.data.augment import MultiCropAugment

        self.config = config
        self.rank, self.world_size = dist.rank, dist.world_size
        self.device = dist.device
        self.augment = MultiCropAugment(config.augment).to(dist.device)
        patch = arch_patch_size(config.model.arch) or 1  # no masks without patch tokens
        if config.data.global_size % patch:
            raise ValueError(
                f"data.global_size={config.data.global_size} must be a multiple of the patch "
                f"size {patch} of {config.model.arch}"
            )
        self.grid = config.data.global_size // patch

    def masks(self, num: int) -> MaskedTokens:
        """Block masks of [num, grid, grid]; iBOT's per-image choice among the pred ratios,
        drawn on the host with their token indices (no host sync to find them on the device).

        Each (ratio, variance) pair of method.pred_ratio / pred_ratio_var is one option; every
        image takes one option uniformly at random (Table 6: ratio 0 or U(0.1, 0.5)).
        """
        from fastproto.data.masking import block_masks

        m = self.config.method
        grid = (self.grid, self.grid)
        options = torch.stack(
            [
                block_masks(num, grid, r, v)
                for r, v in zip(m.pred_ratio, m.pred_ratio_var, strict=True)
            ]
        )  # [options, num, grid, grid]
        choice = torch.randint(0, options.shape[0], (num,))  # [num]
        return MaskedTokens.from_grid(options[choice, torch.arange(num)]).to(self.device)

    def __call__(
        self, batch: Batch, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, MaskedTokens | None]:
        batch = batch.to(self.device)
        global_crops, local_crops = self.augment(batch.global_crops, batch.local_crops)
        g = global_crops.flatten(0, 1)  # [G*B, 3, H, W]
        local = local_crops.flatten(0, 1) if local_crops.shape[0] > 0 else None  # [L*B, 3, h, w]
        masks = self.masks(g.shape[0]) if self.config.method.name == "ibot" else None
        return g, local, masks
