"""What every loader backend shares: epochs, rank shards, resuming, and batch counting.

A backend subclasses `Loader` and implements `_iterate(batches, epoch)`, which receives
this rank's batches of split indices (int64 [B] each, already sharded, shuffled and cut at
the resume point) and yields one `Batch` per entry, in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch

from fastproto.data.batch import Batch
from fastproto.data.order import batch_slices, check_shard, num_batches, rank_order
from fastproto.data.recipe import MultiCropRecipe


class Loader(ABC):
    """Iterable over this rank's multi-crop batches of one epoch; see `make_loader`."""

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        recipe: MultiCropRecipe,
        rank: int,
        world_size: int,
        seed: int,
        drop_last: bool,
        device: torch.device,
    ) -> None:
        check_shard(rank, world_size, batch_size)
        # FFCV counts its samples in a NumPy uint64; under NumPy 1.x, uint64 // int is a
        # float64, which len() refuses, so the count is a Python int from here on
        num_images = int(num_images)
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        if num_images < world_size:
            raise ValueError(f"the split has {num_images} images, fewer than {world_size} ranks")
        self.num_images = num_images
        self.batch_size = batch_size
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.device = device
        self.epoch = 0
        self._start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and crops the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self.epoch = epoch

    def resume_from(self, batch_index: int) -> None:
        """Make the next iteration start at batch `batch_index` of the current epoch."""
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"batch_index={batch_index} must lie in [0, {len(self)}]")
        self._start_batch = batch_index

    def order(self) -> np.ndarray:
        """int64 [n]: this rank's split indices for the current epoch, in reading order."""
        return rank_order(
            self.num_images, self.seed, self.epoch, self.rank, self.world_size, self.drop_last
        )

    def __len__(self) -> int:
        n, w = self.num_images, self.world_size
        shard = n // w if self.drop_last else -(-n // w)
        return num_batches(shard, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        batches = batch_slices(self.order(), self.batch_size, self.drop_last, self._start_batch)
        self._start_batch = 0  # a resume point applies to one iteration only
        for batch in self._iterate(batches, self.epoch):
            yield batch.to(self.device) if self.device.type != "cpu" else batch

    @abstractmethod
    def _iterate(self, batches: list[np.ndarray], epoch: int) -> Iterator[Batch]:
        """Yield one Batch per entry of `batches` (split indices), in order."""
