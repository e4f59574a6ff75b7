"""Multi-crop loading (FFCV, DALI, torchvision folder), device augmentation, iBOT masks."""

from fastproto.data.batch import Batch
from fastproto.data.loader import make_loader
from fastproto.data.recipe import MultiCropRecipe

__all__ = ["Batch", "MultiCropRecipe", "make_loader"]
