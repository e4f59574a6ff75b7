"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Features are L2-normalised, so similarity is cosine: s[m, n] = <x_m, x_n> for test row m and
train row n ([M, N], built in chunks of test rows). The k most similar train rows vote for their
labels with weight exp(s / T):

    score[m, c] = sum over the k nearest n with label c of exp(s[m, n] / T)
    prediction  = argmax_c score[m, c]      (ties go to the lower class index)

and the result is top-1 accuracy in [0, 1] for every requested k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastproto.evaluation.features import check_split, resolve_num_classes


def _ks(k: int | Sequence[int], num_train: int) -> list[int]:
    ks = [k] if isinstance(k, int) else list(k)
    if not ks:
        raise ValueError("k must name at least one neighbourhood size")
    for value in ks:
        if not 1 <= value <= num_train:
            raise ValueError(f"k = {value} must lie in [1, N = {num_train} train samples]")
    return ks


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int | Sequence[int] = (10, 20),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> dict[int, float]:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier, for each k."""
    check_split(train_features, train_labels, test_features, test_labels)
    ks = _ks(k, train_features.shape[0])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    classes = resolve_num_classes(num_classes, train_labels, test_labels)
    train = F.normalize(train_features.float(), dim=1)  # [N, D]
    train_labels = train_labels.to(train.device).long()
    correct = dict.fromkeys(ks, 0)
    k_max = max(ks)
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1).to(train)
        truth = test_labels[start : start + chunk_size].to(train.device)
        sims, index = (test @ train.T).topk(k_max, dim=1)  # [c, k_max], most similar first
        votes = (sims / temperature).exp()  # [c, k_max]
        neighbour_labels = train_labels[index]  # [c, k_max]
        for value in ks:
            scores = torch.zeros(test.shape[0], classes, device=train.device)  # [c, C]
            scores.scatter_add_(1, neighbour_labels[:, :value], votes[:, :value])
            correct[value] += int((scores.argmax(dim=1) == truth).sum())
    return {value: correct[value] / test_features.shape[0] for value in ks}
