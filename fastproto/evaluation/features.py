"""Frozen features: extraction from a model, and the input checks every evaluation shares.

extract_features runs `model` in eval mode without gradients over a loader of
(images [B, ...], labels [B]) batches and returns (features [N, D] float32, labels [N] int64),
both on the CPU so that large evaluation sets do not hold device memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def check_labelled(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """features [N, D] finite floats with N >= 1, labels [N] non-negative integers."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] < 1:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"{name}_features must be a 2-D tensor [N, D] with N >= 1, got {shape}")
    if not features.is_floating_point() or not torch.isfinite(features).all():
        raise ValueError(f"{name}_features must hold finite floating-point values")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"{name}_labels must be a 1-D tensor [N]")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be integer class indices, got {labels.dtype}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}_features has {features.shape[0]} rows but {name}_labels has "
            f"{labels.shape[0]}; pass one label per feature row"
        )
    if (labels < 0).any():
        raise ValueError(f"{name}_labels must be >= 0 (class indices)")


def check_split(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
) -> None:
    """Both halves valid and of the same feature dimension."""
    check_labelled(train_features, train_labels, "train")
    check_labelled(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train features have D = {train_features.shape[1]} but test features have "
            f"D = {test_features.shape[1]}; extract both with the same model"
        )


def resolve_num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    """num_classes, or 1 + the largest label seen; ValueError if a label does not fit."""
    largest = max(int(lab.max()) for lab in labels)
    if num_classes is None:
        return largest + 1
    if num_classes <= largest:
        raise ValueError(f"num_classes = {num_classes} but a label is {largest}; raise it")
    return num_classes


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: Iterable, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] (float32, CPU) and labels [N] (int64, CPU) of `model` over `loader`."""
    was_training = model.training
    model.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for batch in loader:
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise ValueError("loader must yield (images, labels) pairs")
            images, targets = batch
            out = model(images.to(device, non_blocking=True))
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise ValueError("model must return one [B, D] tensor per batch of images")
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(targets).long().cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)
