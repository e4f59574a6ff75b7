"""The torchvision baseline: ImageFolder + DataLoader, one PIL decode per image.

`path` is a class-folder tree (`path/<class>/<image>`) or an ImageNet-style root holding
`path/<split>/<class>/<image>`. Each worker decodes an image once with PIL and turns it
into upright RGB with data_prep's rules (EXIF orientation, 16-bit grey, alpha on white), so
the pixels match what data_prep writes for the FFCV and DALI backends; the files taken are
those data_prep takes (its extension list), in the same order. It then cuts all G + L
crops with `Image.resize(box=window)` (bilinear, antialiased when shrinking, as
torchvision's RandomResizedCrop does on PIL images); in the recipe's "fast" resize mode,
windows shrunk by less than 2x are instead sampled bilinearly without antialiasing
(`Image.transform`, the filter OpenCV's INTER_LINEAR applies). The windows come from
`fastproto.data.crops`, keyed by (seed, epoch, index, crop), so this backend cuts exactly
the windows the FFCV and DALI backends cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import ImageFolder

from fastproto.data.base import Loader
from fastproto.data.batch import Batch
from fastproto.data.crops import bilinear_suffices, crop_params, fill_windows
from fastproto.data.recipe import MultiCropRecipe
from fastproto.data_prep.images import has_image_extension, to_rgb

Key = tuple[int, int]  # (split index, epoch)
Sample = tuple[list[torch.Tensor], int, int]  # (crops [3, S, S] each, label, index)


def find_image_folder(path: Path, split: str) -> ImageFolder:
    """ImageFolder over `path/split` if that folder exists, else over `path`."""
    root = path / split if (path / split).is_dir() else path
    if not root.is_dir():
        raise ValueError(
            f"{path} is not a folder; pass a class-folder tree or a root with {split}/"
        )
    try:
        return ImageFolder(str(root), is_valid_file=lambda f: has_image_extension(Path(f)))
    except FileNotFoundError as err:
        raise ValueError(f"{root} holds no class folders with images: {err}") from err


def cut_crops(
    image: Image.Image, windows: np.ndarray, recipe: MultiCropRecipe
) -> list[torch.Tensor]:
    """uint8 [3, S, S] crops of an RGB image, one per window (top, left, h, w)."""
    crops = []
    for c, (top, left, h, w) in enumerate(windows.tolist()):
        size = recipe.crop_size(c)
        box = (left, top, left + w, top + h)
        if recipe.resize == "fast" and bilinear_suffices(h, w, size):
            # Cropped first so that edge samples clamp to the window, as OpenCV's do.
            window = image.crop(box)
            out = window.transform(
                (size, size), Image.Transform.EXTENT, (0, 0, w, h), Image.Resampling.BILINEAR
            )
        else:
            out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
        crops.append(torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1))
    return crops


class MultiCropFolder(Dataset[Sample]):
    """ImageFolder samples keyed by (index, epoch), returned as all G + L crops."""

    def __init__(self, folder: ImageFolder, recipe: MultiCropRecipe, seed: int) -> None:
        self.folder = folder
        self.recipe = recipe
        self.seed = seed
        self.params = crop_params(recipe)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: Key) -> Sample:
        index, epoch = key
        file, label = self.folder.samples[index]
        with Image.open(file) as raw:
            image = to_rgb(raw)
        windows = np.empty((self.recipe.num_crops, 4), dtype=np.int32)
        fill_windows(self.seed, epoch, index, image.height, image.width, self.params, windows)
        return cut_crops(image, windows, self.recipe), label, index


class KeySampler(Sampler[list[Key]]):
    """Yields the precomputed batches of one epoch as lists of (index, epoch) keys."""

    def __init__(self, batches: list[np.ndarray], epoch: int) -> None:
        self.batches = batches
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in self.batches:
            yield [(int(i), self.epoch) for i in batch]


def collate(samples: list[Sample], num_global: int, local_size: int) -> Batch:
    """Stack per-image crop lists into a Batch ([G, B, 3, H, W] and [L, B, 3, h, w])."""
    num_crops = len(samples[0][0])
    per_crop = [torch.stack([s[0][c] for s in samples]) for c in range(num_crops)]
    glob = torch.stack(per_crop[:num_global])
    if num_crops > num_global:
        local = torch.stack(per_crop[num_global:])
    else:
        local = torch.empty((0, len(samples), 3, local_size, local_size), dtype=torch.uint8)
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    indices = torch.tensor([s[2] for s in samples], dtype=torch.int64)
    return Batch(glob, local, labels, indices)


class FolderLoader(Loader):
    """Multi-crop batches from an image folder through a torch DataLoader."""

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
        self.dataset = MultiCropFolder(find_image_folder(path, split), recipe, seed)
        super().__init__(
            len(self.dataset), batch_size, recipe, rank, world_size, seed, drop_last, device
        )
        self.workers = workers
        # One DataLoader for all epochs (persistent workers, as a tuned torchvision setup
        # would use); each epoch only swaps the batches its sampler hands out.
        self.sampler = KeySampler([], 0)
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=partial(collate, num_global=recipe.num_global, local_size=recipe.local_size),
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            persistent_workers=workers > 0,
        )

    @property
    def classes(self) -> list[str]:
        return self.dataset.folder.classes

    def _iterate(self, batches: list[np.ndarray], epoch: int) -> Iterator[Batch]:
        self.sampler.batches = batches
        self.sampler.epoch = epoch
        yield from self.loader
