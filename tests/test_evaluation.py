"""Frozen-feature evaluation: known answers on separated clusters and random labels, loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastproto.evaluation import extract_features, few_shot, knn_classify, linear_probe
from fastproto.evaluation.fewshot import fit_logistic, sample_shots


def clusters(per_class: int, classes: int = 5, dim: int = 16, noise: float = 0.1):
    """Gaussian clusters around random unit directions -> (features [N, D], labels [N])."""
    gen = torch.Generator().manual_seed(123)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + noise * torch.randn(len(labels), dim), labels


def random_labelled(n: int, classes: int = 4, dim: int = 16):
    return torch.randn(n, dim), torch.randint(0, classes, (n,))


def brute_knn(train, train_labels, test, test_labels, k: int, temperature: float) -> float:
    """DINO's weighted kNN with plain loops in Python floats."""

    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v]

    tr = [unit(r) for r in train.tolist()]
    correct = 0
    for row, truth in zip(test.tolist(), test_labels.tolist(), strict=True):
        q = unit(row)
        sims = sorted(
            ((sum(a * b for a, b in zip(q, t, strict=True)), i) for i, t in enumerate(tr)),
            reverse=True,
        )
        score: dict[int, float] = {}
        for s, i in sims[:k]:
            label = int(train_labels[i])
            score[label] = score.get(label, 0.0) + math.exp(s / temperature)
        best = max(sorted(score), key=lambda c: score[c])  # lowest class wins ties
        correct += best == truth
    return correct / len(test)


@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_knn_matches_a_brute_force_loop(temperature: float) -> None:
    train, train_labels = random_labelled(30, classes=3, dim=5)
    test, test_labels = random_labelled(25, classes=3, dim=5)
    ks = (1, 3, 7, 30)
    got = knn_classify(
        train, train_labels, test, test_labels, k=ks, temperature=temperature, chunk_size=4
    )
    for k in ks:
        expected = brute_knn(train, train_labels, test, test_labels, k, temperature)
        assert got[k] == expected


def test_knn_separated_clusters_and_random_labels() -> None:
    train, train_labels = clusters(40)
    test, test_labels = clusters(20)
    assert knn_classify(train, train_labels, test, test_labels, k=(10, 20)) == {10: 1.0, 20: 1.0}
    train, train_labels = random_labelled(400)
    test, test_labels = random_labelled(2000)
    acc = knn_classify(train, train_labels, test, test_labels, k=10)[10]
    assert abs(acc - 0.25) < 0.06


def test_linear_probe_separated_clusters_random_labels_and_seed() -> None:
    train, train_labels = clusters(40)
    test, test_labels = clusters(20)
    acc = linear_probe(train, train_labels, test, test_labels, epochs=10, batch_size=32)
    assert acc >= 0.98
    train, train_labels = random_labelled(400)
    test, test_labels = random_labelled(2000)
    run = dict(epochs=10, batch_size=64, seed=3)
    acc = linear_probe(train, train_labels, test, test_labels, **run)
    assert abs(acc - 0.25) < 0.06
    assert linear_probe(train, train_labels, test, test_labels, **run) == acc


def test_few_shot_separated_clusters_and_random_labels() -> None:
    train, train_labels = clusters(40)
    test, test_labels = clusters(20)
    result = few_shot(train, train_labels, test, test_labels)
    assert set(result) == {1, 2, 5}
    for n in (1, 2, 5):
        assert result[n]["mean"] >= 0.95
        assert 0.0 <= result[n]["std"] <= 0.05
    train, train_labels = random_labelled(400)
    test, test_labels = random_labelled(2000)
    result = few_shot(train, train_labels, test, test_labels, shots=(5,))
    assert abs(result[5]["mean"] - 0.25) < 0.06


def test_logistic_fit_is_the_regularised_optimum() -> None:
    # At the minimum of mean CE + (l2/2)||W||^2 the gradient, written out by hand, vanishes:
    # (1/n) sum_i (softmax(W x_i) - onehot(y_i)) x_i^T + l2 W = 0.
    x = torch.nn.functional.normalize(torch.randn(12, 6, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 1, 2, 3] * 3)
    w = fit_logistic(x, y, 4, l2=0.075)
    grad = 0.075 * w.clone()
    for xi, yi in zip(x, y, strict=True):
        p = torch.softmax(w @ xi, dim=0)
        p[yi] -= 1.0
        grad += torch.outer(p, xi) / len(x)
    assert float(grad.abs().max()) < 1e-7
    assert float(w.abs().max()) > 0.1  # and it is not the trivial zero solution


def test_shots_are_per_class_and_nested() -> None:
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    one, five = sample_shots(labels, 1, seed=4), sample_shots(labels, 5, seed=4)
    assert torch.bincount(labels[five]).tolist() == [5, 5, 5]
    assert torch.bincount(labels[one]).tolist() == [1, 1, 1]
    assert set(one.tolist()) <= set(five.tolist())
    assert not torch.equal(five, sample_shots(labels, 5, seed=5))


def test_extract_features_eval_mode_no_grad_and_order() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5))
    model.train()
    batches = [(torch.randn(3, 6), torch.tensor([0, 1, 2])), (torch.randn(2, 6), [3, 4])]
    feats, labels = extract_features(model, batches, "cpu")
    expected = torch.cat([model[0](x) for x, _ in batches]).detach()
    torch.testing.assert_close(feats, expected)  # dropout off: eval mode was used
    assert labels.tolist() == [0, 1, 2, 3, 4] and labels.dtype == torch.long
    assert not feats.requires_grad
    assert model.training  # the caller's mode is restored


def test_bad_input_is_refused() -> None:
    train, train_labels = clusters(4)
    test, test_labels = clusters(2)
    with pytest.raises(ValueError, match="rows but"):
        knn_classify(train, train_labels[:-1], test, test_labels)
    with pytest.raises(ValueError, match="rows but"):
        linear_probe(train, train_labels, test, test_labels[:-1])
    with pytest.raises(ValueError, match="k = 21"):
        knn_classify(train, train_labels, test, test_labels, k=(10, 21))
    with pytest.raises(ValueError, match="same model"):
        knn_classify(train, train_labels, test[:, :3], test_labels, k=1)
    with pytest.raises(ValueError, match="fewer than 5 shots"):
        few_shot(train, train_labels, test, test_labels, shots=(5,))
    with pytest.raises(ValueError, match="integer"):
        knn_classify(train, train_labels.float(), test, test_labels, k=1)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(train, train_labels, test, test_labels, k=1, temperature=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(train, train_labels, test, test_labels, k=1, num_classes=2)
    with pytest.raises(ValueError, match=r"\(images, labels\)"):
        extract_features(nn.Identity(), [torch.randn(2, 3)], "cpu")
