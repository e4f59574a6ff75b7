"""head.prototypes = "em": the trainer fits the CLS prototypes by online EM instead of the
gradient, keeps them out of the optimizer, and resumes them exactly."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from fastproto.kernels import teacher_responsibilities
from test_train import data_dirs, tiny_config  # noqa: F401  (data_dirs is a fixture)
from tiny_run import step_state

from fastproto.centering import NoCentering
from fastproto.config import load_config
from fastproto.models import head_prototypes
from fastproto.train import step as step_mod
from fastproto.train.checkpoint import latest_checkpoint, load_checkpoint
from fastproto.train.loop import train
from fastproto.train.setup import build_prototype_em, build_student
from fastproto.train.step import compute_losses

EM = ["head.prototypes='em'", "method.koleo_proto=0.0"]


def test_em_prototypes_come_from_the_mixture_and_resume_exactly(
    data_dirs: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_config(data_dirs["ffcv"], whole, "run.max_steps=4", *EM))
    train(tiny_config(data_dirs["ffcv"], split, "run.max_steps=2", *EM))
    train(tiny_config(data_dirs["ffcv"], split, "run.max_steps=4", *EM))
    a = load_checkpoint(latest_checkpoint(whole))  # type: ignore[arg-type]
    b = load_checkpoint(latest_checkpoint(split))  # type: ignore[arg-type]
    key = "cls_head.prototype_weight"
    w_student, w_teacher = a["student"][key], a["teacher"][key]
    torch.testing.assert_close(w_student, w_teacher, rtol=0, atol=0)  # both heads hold it
    start = load_checkpoint(sorted(whole.glob("checkpoint-*.pt"))[0])["student"][key]
    assert not torch.allclose(start, w_student)  # the mixture moved it
    em = a["prototype_em"]
    mu, kappa = em["direction"], em["kappa"]  # [K, D], [K]
    # W = mu * kappa * tau_t: the rows point where the mixture's means do
    cos = torch.nn.functional.cosine_similarity(w_student, mu, dim=1)
    assert torch.all(cos > 1 - 1e-5) and torch.all(kappa > 0)
    for name, value in em.items():
        torch.testing.assert_close(b["prototype_em"][name], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["student"][key], w_student, rtol=1e-5, atol=1e-6)
    # no AdamW state for W: it is not a parameter the optimizer steps
    sizes = {tuple(s["exp_avg"].shape) for s in a["optimizer"]["state"].values()}
    assert tuple(w_student.shape) not in sizes
    # the epoch rows count the mixture's live components (mass >= min_mass, 1 by default)
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in rows if r.get("kind") == "epoch")
    at_epoch = load_checkpoint(whole / f"checkpoint-{epoch['step']:09d}.pt")["prototype_em"]
    assert epoch["em_live_components"] == int((at_epoch["mass"] >= 1.0).sum())


@pytest.mark.parametrize("estep", ["uncentred", "centred"])
def test_the_cls_loss_hands_the_e_step_of_its_teacher_rows_to_the_mixture(estep: str) -> None:
    """head.em_estep picks the softmax the CLS loss forms the statistics under: uncentred, or
    the loss's centred targets (the pre-batch centre of probability centring)."""
    torch.manual_seed(0)
    state = step_state(*EM, f"head.em_estep='{estep}'")
    assert state.prototype_em is not None and not state.prototype_em.fit_concentration
    probs = torch.softmax(torch.randn(32), 0)
    state.cls_centering.fold_column_mean(probs, 8)  # a centre away from uniform
    centring = copy.deepcopy(state.cls_centering)
    g, loc = torch.randn(8, 3, 28, 28), torch.randn(8, 3, 12, 12)
    losses = compute_losses(state, g, loc, None, teacher_temp=0.04)
    w_t = head_prototypes(state.teacher.cls_head).float().detach()  # [K, D]
    y = losses.teacher_y.float()  # [G*B, D]
    centre = centring.centre_for_loss(y, w_t, 0.04, True, "chunked")  # [K]
    assert float(centre.abs().max()) > 0.1
    shift = centre if estep == "centred" else torch.zeros_like(centre)
    want = teacher_responsibilities(y, w_t, shift, 0.04, True, impl="reference")
    got = losses.responsibilities
    assert got is not None
    torch.testing.assert_close(got.mass, want.mass, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.resultant, want.resultant, rtol=1e-5, atol=1e-6)
    # the mixture folds exactly these statistics in
    em = state.prototype_em
    expected = copy.deepcopy(em)
    expected.kappa.fill_(1.0 / 0.04)
    expected.update_from_statistics(got.mass, got.resultant, y.shape[0], seeds=y)
    step_mod.refit_prototypes(state, losses, 0.04)
    torch.testing.assert_close(em.direction, expected.direction, rtol=0, atol=0)
    torch.testing.assert_close(em.mass, expected.mass, rtol=0, atol=0)


def test_fixed_concentration_writes_unit_rows_at_this_steps_temperature() -> None:
    """head.em_concentration='fixed' (the default): whatever the teacher temperature tau_t, the
    mixture's kappa is 1 / tau_t and the heads get unit-norm rows, as the vMF head starts."""
    config = load_config("demo", [*EM, "head.num_prototypes=32"])
    assert config.head.em_concentration == "fixed"
    student = build_student(config)
    state = type("State", (), {})()
    state.config, state.student, state.teacher = config, student, build_student(config)
    state.prototype_em = build_prototype_em(config, student, torch.device("cpu"))
    state.cls_centering = NoCentering(32)
    y = torch.nn.functional.normalize(torch.randn(16, 64), dim=1)  # [N, D] unit rows
    for teacher_temp in (0.04, 0.07):
        w = state.prototype_em.prototypes(teacher_temp)
        stats = teacher_responsibilities(y, w, torch.zeros(32), teacher_temp, True)
        losses = step_mod.StepLosses(torch.zeros(()), {}, torch.zeros(32), y, stats)
        step_mod.refit_prototypes(state, losses, teacher_temp)
        assert torch.allclose(state.prototype_em.kappa, torch.tensor(1.0 / teacher_temp))
        for network in (state.student, state.teacher):
            norms = head_prototypes(network.cls_head).norm(dim=1)  # [K]
            torch.testing.assert_close(norms, torch.ones(32))


def test_refill_moves_at_most_its_count_of_dead_components_onto_teacher_rows() -> None:
    """head.em_dead_policy='refill' through the trainer: the step's teacher CLS rows are the
    seeds, and no more than head.em_refill_per_step components move."""
    torch.manual_seed(0)
    state = step_state(*EM, "head.em_dead_policy='refill'", "head.em_refill_per_step=2")
    em = state.prototype_em
    assert em is not None and em.refill_per_step == 2
    em.mass[:20] = 0.0  # twenty dead components, the rest live
    em.resultant[:20] = 0.0
    g, loc = torch.randn(8, 3, 28, 28), torch.randn(8, 3, 12, 12)
    losses = compute_losses(state, g, loc, None, teacher_temp=0.04)
    y = losses.teacher_y.float()  # [G*B, D]
    kept = copy.deepcopy(em)  # the same step under "keep"
    kept.dead_policy = "keep"
    kept.kappa.fill_(1.0 / 0.04)
    stats = losses.responsibilities
    assert stats is not None
    kept.update_from_statistics(stats.mass, stats.resultant, y.shape[0])
    step_mod.refit_prototypes(state, losses, 0.04)
    moved = (em.direction != kept.direction).any(dim=1)  # [K]
    assert int(moved.sum()) == 2 and bool(kept.dead()[moved].all())
    on_rows = (em.direction[moved] @ y.T).max(dim=1).values  # [2]: each on a teacher row
    torch.testing.assert_close(on_rows, torch.ones(2), rtol=0, atol=1e-5)
    w = head_prototypes(state.teacher.cls_head)  # [K, D], unit rows under fixed kappa
    torch.testing.assert_close(w[moved], em.direction[moved], rtol=1e-6, atol=1e-6)
    # the moved components' centres restart at the uniform share; the others keep theirs
    centre = state.cls_centering.centre_now(0.04)  # [K]
    k = centre.shape[0]
    assert torch.equal(centre[moved], torch.full((2,), -math.log(k)))
    assert bool((centre[~moved] != -math.log(k)).all())


def test_em_refuses_settings_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="set method.koleo_proto=0"):
        load_config("demo", ["head.prototypes='em'"])
    with pytest.raises(ValueError, match="needs head.norm='vmf'"):
        load_config("demo", [*EM, "head.norm='l2'"])
    with pytest.raises(ValueError, match="head.prototypes must be one of"):
        load_config("demo", ["head.prototypes='kmeans'"])
    with pytest.raises(ValueError, match="head.em_refill_per_step must be >= 1"):
        load_config("demo", [*EM, "head.em_dead_policy='refill'", "head.em_refill_per_step=0"])
