"""Few-shot evaluation: L2-regularised logistic regression on n labelled images per class.

The protocol of MSN, used in the DINO-vMF paper (section 5.1.3): for each number of shots n and
each split seed, draw n train rows per class, fit a multinomial logistic regression on the frozen
features with a constant L2 strength (0.075), and report top-1 accuracy on the whole test set;
mean and population standard deviation over the seeds.

    x      = (f - mean of the sampled train features) / ||...||     rows centred, then unit norm
    min_W  (1/n) sum_i CE(W x_i, y_i) + (l2 / 2) ||W||_F^2           W [C, D], no bias

The objective is strictly convex, so it is solved to convergence with L-BFGS in float64 and the
result depends only on the sampled rows. Sampling: for each class, a permutation of its rows from
a generator seeded with the split seed; the first n are taken, so a seed's 1-shot rows are among
its 2-shot rows, which are among its 5-shot rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastproto.evaluation.features import check_split


def sample_shots(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of `shots` rows for every class present in labels [N] (split `seed`)."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels.cpu()):
        rows = (labels.cpu() == c).nonzero().squeeze(1)
        if rows.numel() < shots:
            raise ValueError(
                f"class {int(c)} has {rows.numel()} train rows, fewer than {shots} shots; "
                "lower the shots or drop the class"
            )
        picked.append(rows[torch.randperm(rows.numel(), generator=gen)[:shots]])
    return torch.cat(picked)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 500
) -> torch.Tensor:
    """Weights W [C, D] minimising mean cross-entropy + (l2 / 2) ||W||^2 (x [n, D], y [n])."""
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight],
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach()


def _accuracy_one_split(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    l2: float,
) -> float:
    classes, y = torch.unique(train_labels, return_inverse=True)  # [C], [n]
    mean = train.mean(dim=0)  # [D]
    x_train = F.normalize(train - mean, dim=1)
    x_test = F.normalize(test - mean, dim=1)
    weight = fit_logistic(x_train, y, classes.numel(), l2)
    predicted = classes[(x_test @ weight.T).argmax(dim=1)]
    return float((predicted == test_labels).double().mean())


def few_shot(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    shots: Sequence[int] = (1, 2, 5),
    seeds: Sequence[int] = (0, 1, 2),
    l2: float = 0.075,
) -> dict[int, dict[str, float]]:
    """{shots: {"mean": accuracy, "std": accuracy}} over the split seeds; accuracy in [0, 1]."""
    check_split(train_features, train_labels, test_features, test_labels)
    if not shots or any(n < 1 for n in shots):
        raise ValueError(f"shots must be a non-empty list of counts >= 1, got {list(shots)}")
    if not seeds:
        raise ValueError("seeds must name at least one split")
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    train, test = train_features.double().cpu(), test_features.double().cpu()
    train_labels, test_labels = train_labels.long().cpu(), test_labels.long().cpu()
    result = {}
    for n in shots:
        accs = []
        for seed in seeds:
            rows = sample_shots(train_labels, n, seed)
            accs.append(_accuracy_one_split(train[rows], train_labels[rows], test, test_labels, l2))
        values = torch.tensor(accs, dtype=torch.float64)
        result[n] = {"mean": float(values.mean()), "std": float(values.std(correction=0))}
    return result
