"""Unique prototypes (paper 1, definition 4.1) against constructed sets and a brute-force twin."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastproto.prototypes import (
    data_share_by_redundancy,
    unique_prototypes,
    unique_prototypes_curve,
)


def brute_force_greedy(weights: torch.Tensor, eps: float) -> tuple[list[int], list[int]]:
    """The greedy rule written out as plain loops over a float64 K x K comparison."""
    w = weights.double().numpy()
    mu = w / np.linalg.norm(w, axis=1, keepdims=True)
    k_total = len(mu)
    owner = [-1] * k_total
    reps = []
    for k in range(k_total):
        if owner[k] >= 0:
            continue
        owner[k] = k
        reps.append(k)
        for j in range(k + 1, k_total):
            if owner[j] < 0 and 1.0 - float(mu[k] @ mu[j]) < eps:
                owner[j] = k
    return reps, owner


def jittered_groups(sizes: list[int], dim: int = 64, jitter: float = 1e-3) -> torch.Tensor:
    """Groups of near-duplicates around random centres, shuffled, with random magnitudes."""
    centres = torch.nn.functional.normalize(torch.randn(len(sizes), dim), dim=1)
    rows = [c + jitter * torch.randn(n, dim) for c, n in zip(centres, sizes, strict=True)]
    w = torch.cat(rows)
    return w * torch.empty(len(w), 1).uniform_(0.5, 5.0)


def test_groups_of_duplicates_give_the_group_count_and_sizes() -> None:
    sizes = [1, 3, 5, 2, 8, 4]
    w = jittered_groups(sizes)
    group_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    perm = torch.randperm(len(w))
    w, group_of = w[perm], group_of[perm]
    report = unique_prototypes(w, eps=0.025, block_size=4)
    # Representatives are the first member of each group in index order.
    first_seen = list(dict.fromkeys(group_of.tolist()))
    assert report.num_unique == len(sizes)
    assert report.redundancy.tolist() == [sizes[g] for g in first_seen]
    assert group_of[report.representative_index].tolist() == first_seen
    for k in range(len(w)):
        rep = int(report.representative[k])
        assert group_of[rep] == group_of[k] and rep <= k
    assert report.largest_duplicate_set == 8


def test_one_huge_duplicate_set_is_found() -> None:
    void = jittered_groups([400])
    others = torch.nn.functional.normalize(torch.randn(100, 64), dim=1)
    w = torch.cat([others[:30], void, others[30:]])
    report = unique_prototypes(w, eps=0.025, block_size=64)
    assert report.num_unique == 101
    assert report.largest_duplicate_set == 400
    assert int(report.representative_index[report.redundancy.argmax()]) == 30


def test_orthogonal_prototypes_are_all_unique() -> None:
    q, _ = torch.linalg.qr(torch.randn(48, 48))
    report = unique_prototypes(q * 3.0, eps=0.5, block_size=5)
    assert report.num_unique == 48
    assert report.redundancy.tolist() == [1] * 48
    assert report.representative.tolist() == list(range(48))
    assert report.largest_duplicate_set == 1


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.4])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_agrees_exactly_with_brute_force(eps: float, block_size: int) -> None:
    # Low dimension so that many prototypes fall within eps and chains of near-neighbours form.
    w = torch.randn(90, 3, dtype=torch.float64)
    reps, owner = brute_force_greedy(w, eps)
    report = unique_prototypes(w, eps=eps, block_size=block_size)
    assert report.representative_index.tolist() == reps
    assert report.representative.tolist() == owner
    assert report.redundancy.tolist() == [owner.count(r) for r in reps]
    assert report.num_unique == len(reps)


def test_independent_of_block_size_in_float32() -> None:
    w = torch.randn(300, 4)
    reports = [unique_prototypes(w, eps=0.1, block_size=b) for b in (1, 13, 300, 4096)]
    for other in reports[1:]:
        assert torch.equal(other.representative, reports[0].representative)
        assert torch.equal(other.redundancy, reports[0].redundancy)


def test_curve_counts_at_known_thresholds() -> None:
    w = jittered_groups([3, 2, 4, 1], dim=16)
    # eps far below the jitter: all distinct; between jitter and group spread: the groups;
    # near 2: every direction is within eps of the first.
    assert unique_prototypes_curve(w, [1e-12, 0.025, 1.999]) == [10, 4, 1]


def test_data_share_on_a_constructed_case() -> None:
    eye = torch.eye(4)
    # Prototype directions e0 x3, e1, e2, e3 x3: redundancy 3, 1, 1, 3.
    w = torch.stack([eye[0], eye[0], eye[0], eye[1], eye[2], eye[3], eye[3], eye[3]])
    w = w + 1e-4 * torch.randn_like(w)
    report = unique_prototypes(w, eps=0.025)
    assert report.redundancy.tolist() == [3, 1, 1, 3]
    # 4 samples near e0, 2 near e1, 1 near e2, 3 near e3: shares 0.4, 0.2, 0.1, 0.3.
    counts = [4, 2, 1, 3]
    y = torch.cat([eye[i] + 0.05 * torch.randn(n, 4) for i, n in enumerate(counts)])
    share = data_share_by_redundancy(y, w, report)
    assert share.keys() == {1, 3}
    assert share[3] == pytest.approx((0.4 + 0.3) / 2)
    assert share[1] == pytest.approx((0.2 + 0.1) / 2)
    # A large bias on the e1 representative (index 3) draws every sample to it.
    bias = torch.zeros(8)
    bias[3] = 100.0
    share = data_share_by_redundancy(y, w, report, bias=bias)
    assert share[1] == pytest.approx((1.0 + 0.0) / 2)
    assert share[3] == pytest.approx(0.0)


def test_data_share_is_chunk_independent() -> None:
    w = jittered_groups([3, 1, 2, 5], dim=8)
    report = unique_prototypes(w)
    y = torch.randn(103, 8)
    assert data_share_by_redundancy(y, w, report, chunk_size=7) == pytest.approx(
        data_share_by_redundancy(y, w, report)
    )


def test_bad_input_is_refused() -> None:
    w = torch.randn(10, 4)
    with pytest.raises(ValueError, match="NaN"):
        unique_prototypes(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        unique_prototypes(torch.randn(10))
    with pytest.raises(ValueError, match="K >= 1"):
        unique_prototypes(torch.randn(0, 4))
    for eps in (0.0, 2.0, -0.1):
        with pytest.raises(ValueError, match="eps"):
            unique_prototypes(w, eps=eps)
    with pytest.raises(ValueError, match="zero norm"):
        unique_prototypes(torch.zeros(3, 4))
    report = unique_prototypes(w)
    with pytest.raises(ValueError, match="embeddings"):
        data_share_by_redundancy(torch.randn(5, 3), w, report)
    with pytest.raises(ValueError, match="recompute"):
        data_share_by_redundancy(torch.randn(5, 4), w[:5], report)


SCALE_SCRIPT = textwrap.dedent(
    """
    import resource, time, torch
    from fastproto.prototypes import unique_prototypes
    w = torch.randn(65536, 256)  # random directions: all unique, the most expensive case
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    report = unique_prototypes(w, eps=0.025)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(report.num_unique, wall, cpu, extra_mb)
    """
)


@pytest.mark.slow
def test_scale_k65536_d256_time_and_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCALE_SCRIPT], capture_output=True, text=True, check=True
    )
    num_unique, wall, cpu, extra_mb = out.stdout.split()
    print(f"K=65536 D=256: wall {float(wall):.1f} s, cpu {float(cpu):.1f} s, +{extra_mb} MB")
    assert int(num_unique) == 65536
    assert float(extra_mb) < 2048
    # Under a minute on two uncontended cores; CPU seconds do not grow when other jobs share them.
    assert float(cpu) < 2 * 60
