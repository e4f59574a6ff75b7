"""`make_loader`: one entry point for the FFCV, DALI and torchvision-folder backends.

All three read the same split in the same order (per-epoch permutation from the seed,
strided by rank; see `fastproto.data.order`), cut the same crop windows (see
`fastproto.data.crops`) and yield the same `Batch`:
  global_crops uint8 [G, B, 3, H, W], local_crops uint8 [L, B, 3, h, w],
  labels int64 [B], indices int64 [B].
Inputs per backend:
  ffcv   -> `path/<split>.beton` (fields `image`, `label`), or a .beton file itself
  dali   -> `path/<split>/shard-*.tar` webdataset shards (`<key>.jpg`, `<key>.cls`)
  folder -> a class-folder tree, or a root holding `<split>/<class>/<image>`
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastproto.data.base import Loader
from fastproto.data.recipe import MultiCropRecipe

BACKENDS = ("ffcv", "dali", "folder")


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


def resolve_workers(requested: int) -> int:
    """data.workers as the loaders take it: 0 (the default) is one per CPU core this process
    may use, and more than that is capped at it (FFCV's numba threads cannot exceed it)."""
    available = default_workers()
    return available if requested == 0 else min(requested, available)


def make_loader(
    path: str | Path,
    backend: str,
    batch_size: int,
    recipe: MultiCropRecipe,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    drop_last: bool = True,
) -> Loader:
    """A multi-crop loader over `path` with `backend` in ("ffcv", "dali", "folder").

    Call `set_epoch(e)` before iterating epoch e, and `resume_from(b)` to start the next
    iteration at batch b of the epoch. Batches come out on `device`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; choose one of {BACKENDS}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0 (0 loads in the calling thread)")
    dev = torch.device(device)
    root = Path(path)
    if not root.exists():
        raise ValueError(f"{root} does not exist; run `data_prep` first or fix the path")
    common: dict[str, Any] = dict(
        split=split,
        batch_size=batch_size,
        recipe=recipe,
        rank=rank,
        world_size=world_size,
        seed=seed,
        workers=workers,
        drop_last=drop_last,
        device=dev,
    )
    if backend == "folder":
        from fastproto.data.folder import FolderLoader

        return FolderLoader(root, **common)
    if backend == "ffcv":
        from fastproto.data.beton_fields import check_beton_fields
        from fastproto.data.ffcv_loader import FFCVLoader, find_beton

        check_beton_fields(find_beton(root, split))

        return FFCVLoader(root, **common)
    from fastproto.data.dali_loader import DALILoader

    return DALILoader(root, **common)
