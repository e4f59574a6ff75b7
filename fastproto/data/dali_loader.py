"""DALI backend: webdataset shards decoded once per image by DALI, crops cut by `fn.slice`.

Python feeds each batch through `fn.external_source`: the JPEG bytes (read by offset from
the memory-mapped shards, see `fastproto.data.shards`) and, for every crop c, its window
(top, left) and (h, w) from `fastproto.data.crops`, keyed by (seed, epoch, index, c) and
sized from the JPEG header. DALI decodes each image once (on the CPU with `device_id=None`
when there is no GPU, "mixed" nvJPEG decoding on a GPU), then `fn.slice` cuts every window
and `fn.resize` (bilinear, antialiased) brings it to the crop size. Because we feed the
samples ourselves rather than using `fn.readers.webdataset`, the order, the rank shards
and the resume point are exactly those of the other backends.

The pipeline runs without DALI's prefetching (each `run()` consumes the batch fed just
before), so Python reading overlaps with nothing; DALI's `workers` threads do the decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastproto.data.base import Loader
from fastproto.data.batch import Batch
from fastproto.data.crops import sample_windows
from fastproto.data.recipe import MultiCropRecipe
from fastproto.data.shards import ShardReader, index_shards


def build_pipeline(
    recipe: MultiCropRecipe, batch_size: int, workers: int, device: torch.device
) -> Any:
    """A DALI pipeline: inputs `jpegs`, `anchor{c}`, `shape{c}`; outputs one HWC batch per crop."""
    import nvidia.dali as dali
    from nvidia.dali import fn
    from nvidia.dali import types as dali_types

    types: Any = dali_types  # the enum members are generated at run time

    gpu = device.type == "cuda"
    pipe = dali.Pipeline(
        batch_size=batch_size,
        num_threads=max(1, workers),
        device_id=(device.index or 0) if gpu else None,
        exec_async=False,
        exec_pipelined=False,
        prefetch_queue_depth=1,
    )
    with pipe:
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        outputs = []
        for c in range(recipe.num_crops):
            anchor = fn.external_source(name=f"anchor{c}", dtype=types.FLOAT)
            shape = fn.external_source(name=f"shape{c}", dtype=types.FLOAT)
            crop = fn.slice(
                images,
                anchor,
                shape,
                axis_names="HW",
                normalized_anchor=False,
                normalized_shape=False,
            )
            size = recipe.crop_size(c)
            outputs.append(
                fn.resize(
                    crop,
                    resize_x=size,
                    resize_y=size,
                    interp_type=types.INTERP_LINEAR,
                    antialias=True,
                )
            )
        pipe.set_outputs(*outputs)
    pipe.build()
    return pipe


def hwc_view(out: Any) -> torch.Tensor:
    """A DALI TensorList of HWC crops -> uint8 [B, S, S, 3], a view of DALI's buffer (CPU)."""
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return torch.from_numpy(np.asarray(out.as_tensor()))


def stack_crops(outs: list[Any], batch: int, size: int) -> torch.Tensor:
    """Crops c = 0.. of one kind -> uint8 [C, B, 3, S, S]: one copy, channels-last strides."""
    if not outs:
        return torch.empty((0, batch, 3, size, size), dtype=torch.uint8)
    return torch.stack([hwc_view(o) for o in outs]).permute(0, 1, 4, 2, 3)


class DALILoader(Loader):
    """Multi-crop batches from webdataset shards through a DALI pipeline."""

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
        if recipe.resize != "antialias":
            raise ValueError(
                f"resize={recipe.resize!r} is not available for the dali backend (DALI sets "
                "antialiasing per operator, not per crop); use resize='antialias' or ffcv/folder"
            )
        folder = path / split if (path / split).is_dir() else path
        self.reader = ShardReader(index_shards(folder))
        super().__init__(
            len(self.reader.index), batch_size, recipe, rank, world_size, seed, drop_last, device
        )
        self.workers = workers
        self._pipes: dict[int, Any] = {}  # batch size -> pipeline (the last batch may be short)

    def _pipe(self, size: int) -> Any:
        if size not in self._pipes:
            self._pipes[size] = build_pipeline(self.recipe, size, self.workers, self.device)
        return self._pipes[size]

    def _feed(self, pipe: Any, indices: np.ndarray, epoch: int) -> None:
        sizes = np.array([self.reader.size(int(i)) for i in indices], dtype=np.int64)  # [B, 2]
        windows = sample_windows(self.recipe, self.seed, epoch, indices, sizes[:, 0], sizes[:, 1])
        pipe.feed_input("jpegs", [self.reader.jpeg(int(i)) for i in indices])
        for c in range(self.recipe.num_crops):
            pipe.feed_input(f"anchor{c}", list(windows[:, c, 0:2].astype(np.float32)))
            pipe.feed_input(f"shape{c}", list(windows[:, c, 2:4].astype(np.float32)))

    def _iterate(self, batches: list[np.ndarray], epoch: int) -> Iterator[Batch]:
        g, r = self.recipe.num_global, self.recipe
        for indices in batches:
            pipe = self._pipe(len(indices))
            self._feed(pipe, indices, epoch)
            outs = list(pipe.run())  # DALI reuses these buffers: copied out before the next run
            glob = stack_crops(outs[:g], len(indices), r.global_size)
            local = stack_crops(outs[g:], len(indices), r.local_size)
            labels = torch.from_numpy(self.reader.index.labels[indices])
            yield Batch(glob, local, labels, torch.from_numpy(indices.astype(np.int64)))
