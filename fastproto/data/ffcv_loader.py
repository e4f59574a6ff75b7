"""FFCV backend: `.beton` files with fields `image` (RGBImageField) and `label` (IntField).

FFCV reads, decodes and crops in `workers` threads of compiled code (`MultiCropDecode`:
one JPEG decode per image, every crop cut from it). The traversal order is ours, not
FFCV's: each epoch the loader hands FFCV this rank's shuffled shard (from
`fastproto.data.order`), already cut at the resume point, so skipped batches are never read.
FFCV reuses its output buffers, so every batch is copied out into fresh tensors
(which is also where the HWC crops become CHW). FFCV also sets torch's global thread count:
to 1 on import (`ffcv_threads.import_ffcv` keeps it) and to its worker count whenever a loader
starts; the loader puts the caller's count back. FFCV's memory managers would
flip numba's shared array types to read-only, which makes numba's finalisers fail noisily when
a loader is freed; `ffcv_types.patch_state_types` stops that before the first loader is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import torch

from fastproto.data.base import Loader
from fastproto.data.batch import Batch, crops_from_hwc
from fastproto.data.recipe import MultiCropRecipe


def find_beton(path: Path, split: str) -> Path:
    """`path` itself if it is a .beton file, else `path/<split>.beton`."""
    beton = path if path.is_file() else path / f"{split}.beton"
    if not beton.is_file():
        raise ValueError(f"no {beton}; convert the split with `data_prep` (ffcv format) first")
    return beton


class _FixedOrder:
    """An FFCV traversal order that returns whatever order the loader set for the epoch."""

    def __init__(self) -> None:
        self.order = np.zeros(0, dtype=np.uint64)

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order


class FFCVLoader(Loader):
    """Multi-crop batches from a .beton file through FFCV with `MultiCropDecode`."""

    def __init__(
        self,
        path: Path,
        split: str,
        batch_size: int,
        recipe: MultiCropRecipe,
        rank: int,
        world_size: int,
        seed: int,
        workers: int,
        drop_last: bool,
        device: torch.device,
    ) -> None:
        from fastproto.data.ffcv_threads import import_ffcv

        import_ffcv()
        from ffcv.fields.decoders import IntDecoder
        from ffcv.loader import Loader as FfcvLoader
        from ffcv.loader import OrderOption
        from ffcv.pipeline import PipelineSpec

        from fastproto.data.ffcv_decode import MultiCropDecode
        from fastproto.data.ffcv_types import patch_state_types

        patch_state_types()  # before FFCV compiles its reader (see ffcv_types)
        self.decode = MultiCropDecode(recipe, seed)
        threads = torch.get_num_threads()  # FFCV sets torch's thread count to its own
        self.ffcv: Any = FfcvLoader(
            str(find_beton(path, split)),
            batch_size=batch_size,
            num_workers=max(1, workers),
            order=OrderOption.SEQUENTIAL,
            pipelines={
                "image": PipelineSpec("image", decoder=self.decode),
                "label": PipelineSpec("label", decoder=IntDecoder()),
            },
            drop_last=drop_last,
        )
        super().__init__(
            self.ffcv.reader.num_samples,
            batch_size,
            recipe,
            rank,
            world_size,
            seed,
            drop_last,
            device,
        )
        self.fixed_order = _FixedOrder()
        self.ffcv.traversal_order = self.fixed_order
        torch.set_num_threads(threads)

    def _iterate(self, batches: list[np.ndarray], epoch: int) -> Iterator[Batch]:
        if not batches:
            return
        order = np.concatenate(batches).astype(np.uint64)
        self.fixed_order.order = order
        self.ffcv.first_traversal_order = order  # FFCV's len() reads it
        self.decode.set_epoch(epoch)
        g, s = self.recipe.num_global, self.recipe.global_size
        num_local, ls = self.recipe.num_local, self.recipe.local_size
        split = g * s * s * 3
        threads = torch.get_num_threads()
        iterator = iter(self.ffcv)
        try:
            for indices, (flat, labels) in zip(batches, iterator, strict=True):
                # FFCV's iterator and its thread reset torch's thread count: put it back.
                torch.set_num_threads(threads)
                crops = torch.from_numpy(np.asarray(flat))  # [B, sum of crop bytes], reused by FFCV
                glob = crops_from_hwc(crops[:, :split], g, s)
                local = crops_from_hwc(crops[:, split:], num_local, ls)
                label = torch.from_numpy(np.asarray(labels).reshape(-1).astype(np.int64))
                yield Batch(glob, local, label, torch.from_numpy(indices.astype(np.int64)))
        finally:
            _stop(iterator)


def _stop(iterator: Any) -> None:
    """Stop FFCV's prefetch thread before releasing its memory (also when we stop early).

    The thread may be blocked handing a batch (or its end marker) to a full queue, so the
    queue is drained while waiting for it to exit.
    """
    event = getattr(iterator, "terminate_event", None)
    if event is not None:
        event.set()
    queue = getattr(iterator, "output_queue", None)
    while getattr(iterator, "is_alive", lambda: False)():
        if queue is not None:
            with contextlib.suppress(Empty):
                queue.get_nowait()
        iterator.join(timeout=0.05)
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
