"""Frozen features for evaluation: a plain loader, the teacher backbone, checkpoints.

Evaluation images are whole images resized to data.global_size (one crop, area 1, aspect 1),
normalised like the training crops (ImageNet mean/std), in file order (no shuffling, no drop).
Features are the teacher backbone's CLS token [N, E], as DINO and iBOT evaluate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from fastproto.config import TrainConfig, from_dict
from fastproto.data.augment import IMAGENET_MEAN, IMAGENET_STD
from fastproto.data.recipe import MultiCropRecipe
from fastproto.models import SSLNetwork
from fastproto.train.checkpoint import CheckpointError, load_checkpoint


class BackboneFeatures(nn.Module):
    """images [B, 3, H, W] -> CLS features [B, E] of a network's backbone."""

    def __init__(self, network: SSLNetwork) -> None:
        super().__init__()
        self.network = network

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.backbone(images)[0]


class EvalImages:
    """Iterable of (images float [B, 3, S, S], labels int64 [B]) over one split."""

    def __init__(
        self, config: TrainConfig, path: str, split: str, device: torch.device, batch: int = 256
    ) -> None:
        from fastproto.data.loader import make_loader, resolve_workers

        size = config.data.global_size
        recipe = MultiCropRecipe(
            num_global=1,
            global_size=size,
            global_scale=(1.0, 1.0),
            num_local=0,
            local_size=size,
            local_scale=(1.0, 1.0),
            ratio=(1.0, 1.0),
        )
        self.loader = make_loader(
            path,
            config.data.backend,
            batch,
            recipe,
            split=split,
            seed=0,
            workers=resolve_workers(config.data.workers),
            device=device,
            drop_last=False,
        )
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.set_epoch(0)
        for batch in self.loader:
            images = batch.global_crops[0].float().div(255.0)  # [B, 3, S, S]
            yield (images - self.mean) / self.std, batch.labels


def split_features(
    network: SSLNetwork, config: TrainConfig, path: str, split: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher CLS features [N, E] and labels [N] of one split."""
    from fastproto.evaluation import extract_features

    return extract_features(
        BackboneFeatures(network), EvalImages(config, path, split, device), device
    )


class PixelFeatures(nn.Module):
    """images [B, 3, H, W] -> the normalised pixels themselves, flattened [B, 3*H*W]."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def knn_accuracy(
    network: SSLNetwork | None, config: TrainConfig, path: str, device: torch.device
) -> dict[str, float]:
    """Weighted kNN top-1 (k = 10, 20; temperature 0.07, as DINO) of the backbone's CLS
    features, train split against val split; keys "10" and "20". `network` None: of the raw
    pixels (the baseline a representation has to beat on small images)."""
    from fastproto.evaluation import extract_features, knn_classify

    model: nn.Module = PixelFeatures() if network is None else BackboneFeatures(network)
    train_f, train_y = extract_features(model, EvalImages(config, path, "train", device), device)
    val_f, val_y = extract_features(model, EvalImages(config, path, "val", device), device)
    knn = knn_classify(train_f, train_y, val_f, val_y, k=(10, 20), temperature=0.07)
    return {str(k): v for k, v in knn.items()}


def network_from_checkpoint(
    path: Path, device: torch.device, which: str = "teacher"
) -> tuple[TrainConfig, SSLNetwork, dict[str, object]]:
    """-> (the run's config, its teacher (or `which` = "student") network in eval mode, the
    raw checkpoint)."""
    from fastproto.train.setup import build_student

    saved = load_checkpoint(path)
    if not isinstance(saved.get("config"), dict) or not isinstance(saved.get("teacher"), dict):
        raise CheckpointError(
            f"checkpoint {path} holds no run config or teacher: it is not a checkpoint written "
            "by `fastproto train`; pass a checkpoint-*.pt from a run directory"
        )
    config = from_dict(saved["config"], str(path))
    network = build_student(config, drop_path=0.0)
    try:
        network.load_state_dict(saved[which])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {path}: its {which} does not fit the network its own config builds "
            f"({type(err).__name__}); the file is damaged, use another checkpoint of the run"
        ) from err
    return config, network.to(device).eval(), saved
