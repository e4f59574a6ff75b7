"""Which images a rank reads in an epoch, and in what order.

Every rank draws the same permutation of the N split indices from (seed, epoch) and takes
every `world_size`-th entry starting at its rank, so the ranks' shards are disjoint and
together cover the split (DistributedSampler's scheme):
  drop_last=True:  the permutation is cut to floor(N / world) * world first (the few
                   images past that are left out this epoch, different ones each epoch);
  drop_last=False: it is padded by wrapping around to ceil(N / world) * world, so every
                   rank gets the same number of images.
A resumed run starts at `start_batch` by slicing the order, so nothing is decoded for
the batches it skips.
"""

from __future__ import annotations

import numpy as np


def check_shard(rank: int, world_size: int, batch_size: int) -> None:
    """Validate the distributed arguments shared by every backend."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")


def epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    """int64 [N]: the permutation of the split shared by all ranks in `epoch`."""
    return np.random.default_rng([seed, epoch]).permutation(num_images).astype(np.int64)


def rank_order(
    num_images: int, seed: int, epoch: int, rank: int, world_size: int, drop_last: bool
) -> np.ndarray:
    """int64 [n]: the split indices that `rank` reads in `epoch`, in reading order."""
    # Python ints: a numpy unsigned count (FFCV reports lengths as uint64) would wrap in -(-n // w).
    num_images, world_size = int(num_images), int(world_size)
    perm = epoch_permutation(num_images, seed, epoch)
    if drop_last:
        perm = perm[: (num_images // world_size) * world_size]
    else:
        total = -(-num_images // world_size) * world_size
        perm = np.resize(perm, total)  # wraps around to pad
    return perm[rank::world_size]


def num_batches(shard_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for a shard of `shard_size` images."""
    return shard_size // batch_size if drop_last else -(-shard_size // batch_size)


def batch_slices(
    order: np.ndarray, batch_size: int, drop_last: bool, start_batch: int
) -> list[np.ndarray]:
    """The batches of `order` from `start_batch` on (each int64 [<= batch_size])."""
    count = num_batches(len(order), batch_size, drop_last)
    if not 0 <= start_batch <= count:
        raise ValueError(f"start_batch={start_batch} must lie in [0, {count}] for this epoch")
    return [order[b * batch_size : (b + 1) * batch_size] for b in range(start_batch, count)]
