"""Dataset conversion to FFCV and DALI formats, with a manifest and `verify`."""

from .prepare import prepare_fashion_mnist, prepare_folder, prepare_imagenet
from .sources import DataPrepError
from .verify import verify_output

__all__ = [
    "DataPrepError",
    "prepare_fashion_mnist",
    "prepare_folder",
    "prepare_imagenet",
    "verify_output",
]
