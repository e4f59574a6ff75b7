"""Linear probe: a linear classifier trained on frozen features.

Recipe (fixed, so numbers are comparable between runs):
  1. L2-normalise every feature row, then standardise each dimension with the mean and standard
     deviation of the train rows (the same statistics are applied to the test rows);
  2. a linear layer [D -> C], weights and bias initialised to zero (the problem is convex, so the
     start point only matters for speed, and zero makes it seed-free);
  3. cross-entropy, SGD with momentum 0.9, weight decay `weight_decay`, mini-batches of
     `batch_size` reshuffled every epoch from a generator seeded with `seed`, learning rate
     decayed from `lr` to 0 by a per-step cosine;
  4. top-1 accuracy in [0, 1] on the test rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastproto.evaluation.features import check_split, resolve_num_classes


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalise rows, then z-score every dimension with the train statistics."""
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    mean, std = train.mean(dim=0), train.std(dim=0, correction=0) + 1e-6  # [D], [D]
    return (train - mean) / std, (test - mean) / std


def _check_hyper(epochs: int, lr: float, weight_decay: float, batch_size: int) -> None:
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not (lr > 0 and math.isfinite(lr)) or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got {lr} and {weight_decay}")


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
) -> float:
    """Top-1 test accuracy (in [0, 1]) of a linear classifier trained on the train features."""
    check_split(train_features, train_labels, test_features, test_labels)
    _check_hyper(epochs, lr, weight_decay, batch_size)
    classes = resolve_num_classes(num_classes, train_labels, test_labels)
    x_train, x_test = standardise(train_features, test_features)  # [N, D], [M, D]
    y_train = train_labels.to(x_train.device).long()
    layer = torch.nn.Linear(x_train.shape[1], classes, device=x_train.device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total))
    )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=gen).to(x_train.device)
        for start in range(0, x_train.shape[0], batch_size):
            rows = order[start : start + batch_size]
            loss = F.cross_entropy(layer(x_train[rows]), y_train[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        predicted = layer(x_test).argmax(dim=1)
    return float((predicted == test_labels.to(predicted.device)).double().mean())
