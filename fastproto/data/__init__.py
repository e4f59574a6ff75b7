"""Multi-crop loading (FFCV, DALI, torchvision folder), device augmentation, iBOT masks."""

from fastproto.data.augment import MultiCropAugment
from fastproto.data.base import Loader
from fastproto.data.batch import Batch
from fastproto.data.loader import make_loader
from fastproto.data.masking import block_masks
from fastproto.data.recipe import MultiCropRecipe

__all__ = ["Batch", "Loader", "MultiCropAugment", "MultiCropRecipe", "block_masks", "make_loader"]
