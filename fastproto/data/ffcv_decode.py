"""FFCV pipeline operation: decode each JPEG once and cut all G + L crops from it.

FFCV's stock RandomResizedCropRGBImageDecoder decodes the image once per crop declared on
the field, and draws windows from numpy's global generator. `MultiCropDecode` decodes once
into a scratch buffer [max H * max W * 3], then for every crop c draws its window with
`fastproto.data.crops.fill_windows` keyed by (seed, epoch, split index, c) and resizes it
into its slot of the output with FFCV's own crop-resize (OpenCV INTER_AREA), or, in the
recipe's "fast" resize mode where `bilinear_suffices`, with OpenCV's bilinear resize
(`fastproto.data.cv_linear`):

  output per image: uint8 [sum_c S_c * S_c * 3], crop c as HWC at offset sum_{c' < c} S_c'^2 * 3

The compiled decode loop cannot see Python attributes that change after compilation, so
the current (seed, epoch) live in a small int64 array [2] owned by the operation, and the
loop copies them in through FFCV's own memcpy from that array's fixed address. Setting
`epoch` before an epoch starts therefore needs no recompilation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.libffcv import ctypes_memcopy, imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from numba import njit

from fastproto.data.crops import bilinear_suffices, crop_params, fill_windows
from fastproto.data.cv_linear import load_cv_resize, make_linear_resize, new_headers
from fastproto.data.recipe import MultiCropRecipe


def crop_offsets(recipe: MultiCropRecipe) -> np.ndarray:
    """int64 [C + 1]: byte offset of each crop's HWC block in an image's output row."""
    sizes = [recipe.crop_size(c) ** 2 * 3 for c in range(recipe.num_crops)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class MultiCropDecode(Operation):
    """Decode once, cut every crop of the recipe; see the module docstring."""

    def __init__(self, recipe: MultiCropRecipe, seed: int) -> None:
        super().__init__()
        self.recipe = recipe
        self.state = np.array([seed, 0], dtype=np.int64)  # [seed, epoch], read at run time
        self.offsets = crop_offsets(recipe)

    def set_epoch(self, epoch: int) -> None:
        self.state[1] = epoch

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, Any]:
        max_pixels = np.uint64(self.metadata["width"].max()) * np.uint64(
            self.metadata["height"].max()
        )
        out_shape = (int(self.offsets[-1]),)
        u8 = np.dtype("<u1")
        new_state = replace(previous_state, jit_mode=True, shape=out_shape, dtype=u8)
        scratch = AllocationQuery((int(max_pixels * np.uint64(3)),), u8)
        return new_state, (AllocationQuery(out_shape, u8), scratch)

    def generate_code(self) -> Callable:
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        memcopy = ctypes_memcopy
        state_addr = self.state.ctypes.data
        params = crop_params(self.recipe)  # [C, 4]
        offsets = self.offsets  # [C + 1]
        sizes = np.array([self.recipe.crop_size(c) for c in range(self.recipe.num_crops)])
        jpg = IMAGE_MODES["jpg"]
        fast = self.recipe.resize == "fast"
        linear_c = make_linear_resize(load_cv_resize()) if fast else _never_called

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, scratch_all = my_storage
            state = np.empty(2, dtype=np.int64)
            memcopy(state_addr, state.ctypes.data, 16)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    scratch = scratch_all[dst_ix]
                    imdecode_c(
                        image_data, scratch, height, width, height, width, 0, 0, 1, 1, False, False
                    )
                    image = scratch.reshape(-1)[: 3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                windows = np.empty((params.shape[0], 4), dtype=np.int32)
                fill_windows(
                    int(state[0]),
                    int(state[1]),
                    int(source_ix),
                    int(height),
                    int(width),
                    params,
                    windows,
                )
                row = destination[dst_ix]
                headers = new_headers()  # CvMat scratch, per image
                for c in range(params.shape[0]):
                    top, left, h, w = windows[c, 0], windows[c, 1], windows[c, 2], windows[c, 3]
                    out = row[offsets[c] : offsets[c + 1]].reshape(sizes[c], sizes[c], 3)
                    if fast and bilinear_suffices(h, w, sizes[c]):
                        linear_c(image, top, left, h, w, out, headers)
                    else:
                        resize_crop_c(image, top, top + h, left, left + w, out)
            return destination[: len(batch_indices)]

        decode.is_parallel = True  # type: ignore[attr-defined]
        return decode


@njit
def _never_called(image, top, left, h, w, out, headers):
    """Stands in for the bilinear resize when the recipe's resize mode is "antialias"."""
