"""KoLeo-proto (paper 1, eq. 5 and appendix A.3) and KoLeo-data against plain float64 loops."""

from __future__ import annotations

import math

import pytest
import torch

from fastproto.losses import koleo
from fastproto.losses.koleo import koleo_data, koleo_group_sizes, koleo_proto


def brute_koleo(rows: list[list[float]], eps: float = 1e-8) -> float:
    """-(1/n) sum_k log(min_{i != k} ||mu_k - mu_i|| + eps), with loops, in Python floats."""
    unit = []
    for r in rows:
        norm = math.sqrt(sum(v * v for v in r))
        unit.append([v / norm for v in r])
    total = 0.0
    for k, a in enumerate(unit):
        nearest = min(
            math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
            for i, b in enumerate(unit)
            if i != k
        )
        total += math.log(nearest + eps)
    return -total / len(unit)


def expected_sizes(num: int, group_size: int) -> list[int]:
    """The documented partition: ceil(num / group_size) near-equal groups, larger ones first."""
    groups = math.ceil(num / group_size)
    if num // groups < 2:
        groups = num // 2
    sizes = [num // groups] * groups
    for t in range(num % groups):
        sizes[t] += 1
    return sizes


@pytest.mark.parametrize("num,dim", [(2, 3), (7, 5), (40, 8)])
def test_single_group_equals_the_plain_formula(num: int, dim: int) -> None:
    w = torch.randn(num, dim, dtype=torch.float64) * 3.0
    got = koleo_proto(w, group_size=num)
    assert float(got) == pytest.approx(brute_koleo(w.tolist()), rel=1e-12, abs=1e-12)
    assert float(koleo_proto(w, group_size=10_000)) == pytest.approx(float(got), rel=1e-12)


@pytest.mark.parametrize("num,group_size", [(10, 4), (37, 8), (33, 11), (9, 2), (100, 30)])
def test_groups_sum_over_the_partition_from_the_seed(num: int, group_size: int) -> None:
    w = torch.randn(num, 6, dtype=torch.float64)
    got = koleo_proto(w, group_size=group_size, generator=torch.Generator().manual_seed(7))
    order = torch.randperm(num, generator=torch.Generator().manual_seed(7)).tolist()
    sizes = expected_sizes(num, group_size)
    assert min(sizes) >= 2 and sum(sizes) == num
    expected, start = 0.0, 0
    for size in sizes:
        expected += brute_koleo([w[i].tolist() for i in order[start : start + size]])
        start += size
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_group_sizes_stay_within_group_size() -> None:
    # 9 prototypes with groups of at most 4: ceil(9/4) = 3 groups of 3, not 4 + 4 + 1.
    assert expected_sizes(9, 4) == [3, 3, 3]
    w = torch.randn(9, 3, dtype=torch.float64)
    got = koleo_proto(w, group_size=4, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(9, generator=torch.Generator().manual_seed(1)).tolist()
    parts = [order[0:3], order[3:6], order[6:9]]
    expected = sum(brute_koleo([w[i].tolist() for i in p]) for p in parts)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_koleo_data_equals_the_plain_formula() -> None:
    y = torch.randn(17, 5, dtype=torch.float64)
    assert float(koleo_data(y)) == pytest.approx(brute_koleo(y.tolist()), rel=1e-12)


def min_distance(w: torch.Tensor) -> float:
    mu = torch.nn.functional.normalize(w.double(), dim=1)
    d = torch.cdist(mu, mu)
    d.fill_diagonal_(float("inf"))
    return float(d.min())


@pytest.mark.parametrize("group_size", [64, 16])
def test_a_gradient_step_pushes_nearest_neighbours_apart(group_size: int) -> None:
    w = torch.randn(64, 4, requires_grad=True)
    before = min_distance(w.detach())
    for _ in range(20):
        loss = koleo_proto(w, group_size=group_size, generator=torch.Generator().manual_seed(0))
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= 0.01 * grad
    assert min_distance(w.detach()) > before


def test_koleo_data_gradient_step_pushes_apart() -> None:
    y = torch.randn(32, 3, requires_grad=True)
    before = min_distance(y.detach())
    (grad,) = torch.autograd.grad(koleo_data(y), y)
    assert min_distance(y.detach() - 0.01 * grad) > before


def test_exact_duplicates_give_finite_loss_and_gradient() -> None:
    w = torch.randn(6, 4)
    w[3] = w[0]
    w.requires_grad_(True)
    loss = koleo_proto(w, group_size=6)
    loss.backward()
    assert torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(brute_koleo(w.tolist()), rel=1e-5)
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_same_generator_seed_gives_same_value() -> None:
    w = torch.randn(50, 5)
    a = koleo_proto(w, 8, torch.Generator().manual_seed(3))
    b = koleo_proto(w, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        koleo_proto(torch.randn(1, 4))
    with pytest.raises(ValueError, match="group_size"):
        koleo_proto(torch.randn(10, 4), group_size=1)
    with pytest.raises(ValueError, match="2-D"):
        koleo_proto(torch.randn(10))
    with pytest.raises(ValueError, match="2-D"):
        koleo_data(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="NaN"):
        koleo_proto(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        koleo_data(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        koleo_data(torch.randn(1, 3))


def koleo_proto_group_loop(w: torch.Tensor, group_size: int, seed: int) -> torch.Tensor:
    """One group at a time in Python (the unbatched form), differentiable, same partition."""
    mu = torch.nn.functional.normalize(w, dim=1)
    order = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(seed))
    total, start = mu.new_zeros(()), 0
    for size in koleo_group_sizes(w.shape[0], group_size):
        group = mu[order[start : start + size]]  # [S, D]
        sim = (group @ group.T).detach().fill_diagonal_(-3.0)
        nearest = group[sim.argmax(dim=1)]
        total = total - torch.log((group - nearest).norm(dim=1) + 1e-8).mean()
        start += size
    return total


@pytest.mark.parametrize("tile", [koleo.TILE_ELEMENTS, 200])  # 200: one group per batched step
@pytest.mark.parametrize("num,group_size", [(1000, 64), (257, 16), (96, 32), (5, 2)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_groups_match_the_group_loop(
    monkeypatch: pytest.MonkeyPatch, tile: int, num: int, group_size: int, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(koleo, "TILE_ELEMENTS", tile)
    w = (torch.randn(num, 12, dtype=torch.float64) * 2.0).to(dtype).requires_grad_()
    got = koleo_proto(w, group_size, torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(got, w)
    want = koleo_proto_group_loop(w, group_size, seed=5)
    (want_grad,) = torch.autograd.grad(want, w)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("num,group_size", [(40, 8), (23, 5), (7, 2)])
def test_koleo_proto_backward_passes_gradcheck(num: int, group_size: int) -> None:
    # its backward is written by hand: check it against finite differences in float64, with
    # rows of different norms (the backward goes through w / ||w||) and a scaled output
    w = torch.randn(num, 6, dtype=torch.float64) * torch.rand(num, 1, dtype=torch.float64) * 3
    w.requires_grad_()

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return 2.5 * koleo_proto(x, group_size, torch.Generator().manual_seed(11))

    assert torch.autograd.gradcheck(scaled, (w,), eps=1e-6, atol=1e-7)
