"""Centring schemes and ME-MAX against materialised float64 twins written from the papers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastproto.kernels import LossResult
from loss_loops import (
    me_max_loop,
    require_impl,
    sinkhorn_one_iteration_eq3,
    sinkhorn_plain,
    teacher_logits_loop,
)

from fastproto.centering import KINDS, make_centering, me_max_penalty

IMPLS = ["reference", "chunked"]
DIM = 16


def _batch(rows: int, k: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Unit teacher embeddings [rows, DIM] and prototypes [k, DIM] with norms in [0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.nn.functional.normalize(torch.randn(rows, DIM, generator=gen), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(k, DIM, generator=gen), dim=1)
    protos = protos * (0.5 + 1.5 * torch.rand(k, 1, generator=gen))
    return teacher.to(dtype), protos.to(dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vmf", [False, True])
def test_probability_with_momentum_zero_is_one_sinkhorn_iteration(impl: str, vmf: bool) -> None:
    require_impl(impl)
    teacher, protos = _batch(12, 7)
    centering = make_centering("probability", 7, momentum=0.0).double()
    first = centering(teacher, protos, 0.1, vmf, impl)
    assert torch.equal(first, torch.zeros(7, dtype=torch.float64))  # state before the update
    second = centering(teacher, protos, 0.1, vmf, impl)  # the center folded in from call one
    logits = teacher_logits_loop(teacher, protos, 0.1, vmf)
    target = torch.softmax(logits - second, dim=1)
    torch.testing.assert_close(target, sinkhorn_plain(logits, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(target, sinkhorn_one_iteration_eq3(logits), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize("vmf", [False, True])
def test_log_domain_sinkhorn_equals_plain_sinkhorn(impl: str, iterations: int, vmf: bool) -> None:
    require_impl(impl)
    teacher, protos = _batch(10, 13)
    centering = make_centering("sinkhorn", 13, sinkhorn_iterations=iterations).double()
    center = centering(teacher, protos, 0.07, vmf, impl)
    logits = teacher_logits_loop(teacher, protos, 0.07, vmf)
    target = torch.softmax(logits - center, dim=1)
    torch.testing.assert_close(target, sinkhorn_plain(logits, iterations), rtol=0, atol=1e-12)
    assert torch.equal(centering.last_center, center)


def test_sinkhorn_marginals_after_enough_iterations() -> None:
    teacher, protos = _batch(24, 6)
    centering = make_centering("sinkhorn", 6, sinkhorn_iterations=300).double()
    center = centering(teacher, protos, 0.1, True, "reference")
    target = torch.softmax(teacher_logits_loop(teacher, protos, 0.1, True) - center, dim=1)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(24, dtype=torch.float64))
    torch.testing.assert_close(target.sum(dim=0), torch.full((6,), 24 / 6, dtype=torch.float64))


def test_sinkhorn_stays_finite_in_float32_where_exp_overflows() -> None:
    # Large prototype norms with vMF push the logits past float32's exp range (~88.7).
    gen = torch.Generator().manual_seed(1)
    k, dim = 8, 64
    protos = torch.nn.functional.normalize(torch.randn(k, dim, generator=gen), dim=1)
    protos = protos * (10.0 + 10.0 * torch.rand(k, 1, generator=gen))
    noise = 0.3 * torch.randn(2 * k, dim, generator=gen)
    teacher = torch.nn.functional.normalize(protos.repeat(2, 1) + noise, dim=1)  # [2K, D]
    logits32 = teacher_logits_loop(teacher, protos, 0.04, True)
    assert torch.isinf(torch.exp(logits32)).any(), "precondition: plain exp(L) must overflow"
    centering = make_centering("sinkhorn", k, sinkhorn_iterations=5)
    center = centering(teacher, protos, 0.04, True, "reference")
    assert center.dtype == torch.float32 and torch.isfinite(center).all()
    target = torch.softmax(logits32 - center, dim=1)
    assert torch.isfinite(target).all()
    truth = sinkhorn_plain(teacher_logits_loop(teacher.double(), protos.double(), 0.04, True), 5)
    torch.testing.assert_close(target.double(), truth, rtol=0, atol=2e-3)


@pytest.mark.parametrize("kind", ["probability", "sinkhorn"])
def test_a_column_that_underflows_stays_finite(kind: str) -> None:
    # Prototype 0 points away from every row: its float32 probability underflows to exactly 0.
    teacher, protos = _batch(6, 4, dtype=torch.float32)
    direction = torch.nn.functional.normalize(torch.randn(DIM), dim=0)
    teacher = torch.nn.functional.normalize(direction + 0.2 * teacher, dim=1)
    protos[0] = -5.0 * direction
    logits = teacher_logits_loop(teacher, protos, 0.01, False)
    assert (torch.softmax(logits, dim=1)[:, 0] == 0).all(), "precondition: the column underflows"
    centering = make_centering(kind, 4, momentum=0.0)
    for _ in range(2):
        center = centering(teacher, protos, 0.01, False, "reference")
        assert torch.isfinite(center).all()
        assert torch.isfinite(torch.softmax(logits - center, dim=1)).all()


@pytest.mark.parametrize("vmf", [False, True])
def test_logit_centering_is_dino_ema(vmf: bool) -> None:
    momentum, tau, k = 0.7, 0.05, 9
    centering = make_centering("logit", k, momentum=momentum).double()
    running = torch.zeros(k, dtype=torch.float64)
    for step in range(3):
        teacher, protos = _batch(5 + step, k, seed=step)
        center = centering(teacher, protos, tau, vmf, "reference")
        torch.testing.assert_close(center, running / tau, rtol=0, atol=1e-12)
        # Unsharpened teacher output tau * L, with the vMF term when vmf (module docstring).
        outputs = tau * teacher_logits_loop(teacher, protos, tau, vmf)
        running = momentum * running + (1 - momentum) * outputs.mean(dim=0)
    torch.testing.assert_close(centering.center, running, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_probability_centering_is_dino_vmf_ema(impl: str) -> None:
    require_impl(impl)
    momentum, tau, k = 0.9, 0.04, 11
    centering = make_centering("probability", k, momentum=momentum).double()
    running = torch.zeros(k, dtype=torch.float64)
    for step in range(3):
        teacher, protos = _batch(6, k, seed=step)
        center = centering(teacher, protos, tau, True, impl)
        torch.testing.assert_close(center, running, rtol=0, atol=1e-12)
        probs = torch.softmax(teacher_logits_loop(teacher, protos, tau, True), dim=1)
        running = momentum * running + (1 - momentum) * torch.log(probs.mean(dim=0))
    torch.testing.assert_close(centering.center, running, rtol=0, atol=1e-12)


def test_none_is_zero() -> None:
    teacher, protos = _batch(4, 5)
    center = make_centering("none", 5)(teacher, protos, 0.1, True, "reference")
    assert torch.equal(center, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["logit", "probability", "sinkhorn"])
def test_state_lives_in_buffers(kind: str) -> None:
    teacher, protos = _batch(6, 5)
    trained = make_centering(kind, 5, momentum=0.5)
    for _ in range(2):
        trained(teacher.float(), protos.float(), 0.1, True, "reference")
    state = trained.state_dict()
    assert state and all(torch.count_nonzero(v) > 0 for v in state.values())
    restored = make_centering(kind, 5, momentum=0.5)
    restored.load_state_dict(state)
    for name, value in restored.state_dict().items():
        assert torch.equal(value, state[name])
    again = trained(teacher.float(), protos.float(), 0.1, True, "reference")
    torch.testing.assert_close(
        restored(teacher.float(), protos.float(), 0.1, True, "reference"), again
    )


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_process_group_nothing_is_all_reduced(kind: str, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("all_reduce called without a process group")

    monkeypatch.setattr(dist, "all_reduce", forbidden)
    teacher, protos = _batch(6, 5)
    centering = make_centering(kind, 5).double()
    for _ in range(2):
        assert torch.isfinite(centering(teacher, protos, 0.1, True, "reference")).all()


@pytest.mark.parametrize("kind", ["logit", "probability", "sinkhorn"])
def test_bf16_teacher_is_centred_in_float32(kind: str) -> None:
    teacher, protos = _batch(8, 5, dtype=torch.float32)
    teacher = teacher.bfloat16()
    from_bf16, from_float = (
        make_centering(kind, 5, momentum=0.0),
        make_centering(kind, 5, momentum=0.0),
    )
    for _ in range(2):
        got = from_bf16(teacher, protos, 0.1, True, "reference")
        want = from_float(teacher.float(), protos, 0.1, True, "reference")
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_me_max_matches_loop_value_and_gradients() -> None:
    student, protos = _batch(9, 7)
    student.requires_grad_(True)
    protos.requires_grad_(True)
    for vmf in (False, True):
        got = me_max_penalty(student, protos, 0.1, vmf)
        want = me_max_loop(student, protos, 0.1, vmf)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(got, (student, protos))
        want_grads = torch.autograd.grad(want, (student, protos))
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_me_max_is_minus_log_k_at_the_uniform_mean() -> None:
    student, protos = torch.zeros(4, DIM, dtype=torch.float64), _batch(1, 6)[1]
    value = me_max_penalty(student, protos, 0.1, False)
    torch.testing.assert_close(value, torch.tensor(-math.log(6), dtype=torch.float64))


def test_bad_input_raises_value_error() -> None:
    teacher, protos = _batch(4, 5)
    with pytest.raises(ValueError, match="unknown centring kind"):
        make_centering("mean", 5)
    for momentum in (-0.1, 1.0):
        with pytest.raises(ValueError, match="momentum"):
            make_centering("logit", 5, momentum=momentum)
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        make_centering("sinkhorn", 5, sinkhorn_iterations=0)
    with pytest.raises(ValueError, match="num_prototypes"):
        make_centering("probability", 0)
    for kind in KINDS:
        with pytest.raises(ValueError, match="num_prototypes=5"):
            make_centering(kind, 5)(teacher, protos[:4], 0.1, False, "reference")
    with pytest.raises(ValueError, match="teacher_temp"):
        make_centering("logit", 5)(teacher, protos, 0.0, False, "reference")
    with pytest.raises(ValueError, match="D="):
        make_centering("logit", 5)(teacher[:, :8], protos, 0.1, False, "reference")


# Three batches: the first split evenly over the ranks, the second 5 / 7, to check row
# weighting, the third 0 / 12: a rank without rows (an iBOT batch without a masked token there)
# still joins the all-reduce and leaves the statistic to the other rank.
SPLITS = [(6, 6), (5, 7), (0, 12)]


def _run_all_kinds(batches, rank: int | None) -> dict[str, list[torch.Tensor]]:
    """Centers from every kind over `batches`; `rank` picks this rank's rows (None: all rows)."""
    out: dict[str, list[torch.Tensor]] = {}
    for kind in ("logit", "probability", "sinkhorn"):
        centering = make_centering(kind, 7, momentum=0.6).double()
        centers = []
        for (teacher, protos), split in zip(batches, SPLITS, strict=True):
            if rank is not None:
                teacher = teacher.split(list(split))[rank]
            centers.append(centering(teacher, protos, 0.07, True, "reference"))
        centers.append(next(iter(centering.state_dict().values())))
        out[kind] = centers
    return out


ME_MAX_SPLIT = (5, 3)  # uneven: the global mean must weight ranks by their rows


def _me_max_value_and_grads(rank: int | None) -> list[torch.Tensor]:
    """[penalty, grad of its student rows, grad of the prototypes] on this rank's rows."""
    student, protos = _batch(sum(ME_MAX_SPLIT), 6, seed=3)
    if rank is not None:
        student = student.split(list(ME_MAX_SPLIT))[rank]
    student.requires_grad_(True)
    protos.requires_grad_(True)
    value = me_max_penalty(student, protos, 0.1, True)
    return [value.detach(), *torch.autograd.grad(value, (student, protos))]


def _gloo_worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        batches = [_batch(sum(split), 7, seed=10 + i) for i, split in enumerate(SPLITS)]
        torch.save(_run_all_kinds(batches, rank), f"{folder}/rank{rank}.pt")
        torch.save(_me_max_value_and_grads(rank), f"{folder}/me_max{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_with_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_gloo_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    batches = [_batch(sum(split), 7, seed=10 + i) for i, split in enumerate(SPLITS)]
    whole = _run_all_kinds(batches, None)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for kind, centers in whole.items():
            for g, w in zip(got[kind], centers, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    # ME-MAX: every rank sees the global penalty; its row gradients are the global ones times
    # the world size, which DDP's averaging of parameter gradients divides out again.
    value, rows_grad, protos_grad = _me_max_value_and_grads(None)
    per_rank = [torch.load(tmp_path / f"me_max{rank}.pt") for rank in range(2)]
    for rank, (v, g_rows, _) in enumerate(per_rank):
        torch.testing.assert_close(v, value, rtol=0, atol=1e-12)
        mine = rows_grad.split(list(ME_MAX_SPLIT))[rank]
        torch.testing.assert_close(g_rows / 2, mine, rtol=1e-10, atol=1e-12)
    averaged = (per_rank[0][2] + per_rank[1][2]) / 2
    torch.testing.assert_close(averaged, protos_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("vmf", [False, True])
def test_probability_state_from_the_patch_loss_equals_the_module_update(
    impl: str, vmf: bool
) -> None:
    """The training step's patch path: centre_for_loss, then the patch loss's raw means into
    after_loss. It must leave the state the module call leaves, and centre with the same
    pre-batch centre."""
    from fastproto.losses import ibot_patch_loss

    teacher, protos = _batch(19, 9, torch.float32)
    student, student_protos = _batch(19, 9, torch.float32, seed=1)
    image_index = torch.tensor([0] * 7 + [1] * 12)
    called, folded = (make_centering("probability", 9, momentum=0.7) for _ in range(2))
    for c in (called, folded):  # a state away from zero, the same in both
        c.fold_column_mean(
            torch.softmax(torch.randn(9, generator=torch.Generator().manual_seed(3)), 0), 5
        )
    before = called(teacher, protos, 0.05, vmf, impl)
    centre = folded.centre_for_loss(teacher, protos, 0.05, vmf, impl)
    torch.testing.assert_close(centre, before, rtol=0, atol=0)
    assert folded.needs_raw_means
    result = ibot_patch_loss(
        student,
        teacher,
        image_index,
        2,
        student_protos,
        protos,
        centre,
        0.1,
        0.05,
        vmf,
        impl,
        raw_means=True,
    )
    folded.after_loss(result, teacher.shape[0])
    torch.testing.assert_close(folded.center, called.center, rtol=1e-5, atol=1e-6)
    assert float((called.center - before).abs().max()) > 1e-3  # the batch did move the state


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_probability_state_from_the_cls_loss_equals_the_module_update(impl: str) -> None:
    """The training step's CLS path, as the patch path above: centre_for_loss, the DINO
    loss's raw means into after_loss, the same state as the module call."""
    from fastproto.losses import dino_loss

    teacher, protos = _batch(2 * 5, 9, torch.float32)  # G = 2 global crops of B = 5 images
    student, student_protos = _batch(4 * 5, 9, torch.float32, seed=1)  # S = 4 crops
    called, folded = (make_centering("probability", 9, momentum=0.6) for _ in range(2))
    for c in (called, folded):  # a state away from zero, the same in both
        c.fold_column_mean(torch.softmax(torch.arange(9.0), 0), 5)
    before = called(teacher, protos, 0.05, True, impl)
    centre = folded.centre_for_loss(teacher, protos, 0.05, True, impl)
    result = dino_loss(
        student, teacher, student_protos, protos, centre, 2, 0.1, 0.05, True, impl, raw_means=True
    )
    folded.after_loss(result, teacher.shape[0])
    torch.testing.assert_close(centre, before, rtol=0, atol=0)
    torch.testing.assert_close(folded.center, called.center, rtol=1e-5, atol=1e-6)
    assert float((called.center - before).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["logit", "sinkhorn", "none"])
def test_centre_for_loss_is_the_module_call_where_no_raw_means_are_needed(kind: str) -> None:
    """The schemes that make their own statistic: centre_for_loss moves the state as the module
    call does, and after_loss leaves it."""
    teacher, protos = _batch(6, 5)
    called, for_loss = (make_centering(kind, 5, momentum=0.5).double() for _ in range(2))
    assert not for_loss.needs_raw_means
    want = called(teacher, protos, 0.1, True, "reference")
    got = for_loss.centre_for_loss(teacher, protos, 0.1, True, "reference")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    state = {name: value.clone() for name, value in for_loss.state_dict().items()}
    for_loss.after_loss(LossResult(torch.zeros(()), torch.full((5,), 0.2)), teacher.shape[0])
    for name, value in for_loss.state_dict().items():
        assert torch.equal(value, state[name]) and torch.equal(value, called.state_dict()[name])


def test_probability_after_loss_needs_the_raw_means() -> None:
    centring = make_centering("probability", 5)
    with pytest.raises(ValueError, match="raw_means=True"):
        centring.after_loss(LossResult(torch.zeros(()), torch.full((5,), 0.2)), 6)
    with pytest.raises(ValueError, match="num_prototypes=5"):
        centring.centre_for_loss(*_batch(6, 4), 0.1, True, "reference")


@pytest.mark.parametrize("kind", KINDS)
def test_restart_columns_forgets_only_the_moved_prototypes(kind: str) -> None:
    """A moved prototype's past centre is dropped: probability centring restarts it at the
    uniform share log(1 / K), logit centring at the mean centre; the other columns and the
    stateless schemes are left as they were."""
    torch.manual_seed(0)
    k = 6
    centring = make_centering(kind, k)
    teacher = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    protos = torch.randn(k, 4)
    centring(teacher, protos, 0.1, True)  # some state away from the start
    before = {n: b.clone() for n, b in centring.named_buffers()}
    moved = torch.tensor([1, 4])
    centring.restart_columns(moved)
    after = dict(centring.named_buffers())
    keep = torch.tensor([0, 2, 3, 5])
    for name, value in before.items():
        assert torch.equal(after[name][keep], value[keep]), name
    if kind == "probability":
        assert torch.equal(after["center"][moved], torch.full((2,), -math.log(k)))
    elif kind == "logit":
        want = before["center"].mean()
        torch.testing.assert_close(after["center"][moved], want.expand(2), rtol=0, atol=1e-7)
    else:
        for name, value in before.items():
            assert torch.equal(after[name], value), name
