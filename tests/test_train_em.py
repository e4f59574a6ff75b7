"""head.prototypes = "em": the trainer fits the CLS prototypes by online EM instead of the
gradient, keeps them out of the optimizer, and resumes them exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import data_dirs, tiny_config  # noqa: F401  (data_dirs is a fixture)

from fastproto.config import load_config
from fastproto.models import head_prototypes
from fastproto.prototype_em import OnlineVMFMixture
from fastproto.train import step as step_mod
from fastproto.train.checkpoint import latest_checkpoint, load_checkpoint
from fastproto.train.loop import train
from fastproto.train.setup import build_prototype_em, build_student

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


def test_em_options_reach_the_mixture_and_the_e_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """head.em_concentration='fixed' builds a mixture that holds kappa; head.em_estep='centred'
    hands the CLS centre [K] to the E-step, 'uncentred' hands none."""
    config = load_config("demo", [*EM, "head.em_concentration='fixed'", "head.num_prototypes=32"])
    em = build_prototype_em(config, build_student(config), torch.device("cpu"))
    assert em is not None and not em.fit_concentration
    seen: list[torch.Tensor | None] = []
    record = lambda self, y, center=None: seen.append(center)  # noqa: E731
    monkeypatch.setattr(OnlineVMFMixture, "update", record)
    centre = torch.linspace(-1.0, 1.0, 32)

    class Centring:
        def centre_now(self, teacher_temp: float) -> torch.Tensor:
            return centre

    for estep in ("centred", "uncentred"):
        state = type("State", (), {})()
        state.config = load_config("demo", [*EM, f"head.em_estep='{estep}'"])
        state.prototype_em, state.cls_centering = em, Centring()
        state.student = state.teacher = build_student(config)
        step_mod.refit_prototypes(
            state, torch.nn.functional.normalize(torch.randn(4, 64), dim=1), 0.04
        )
    assert seen[0] is not None and torch.equal(seen[0], centre) and seen[1] is None


def test_fixed_concentration_writes_unit_rows_at_this_steps_temperature() -> None:
    """head.em_concentration='fixed' (the default): whatever the teacher temperature tau_t, the
    mixture's kappa is 1 / tau_t and the heads get unit-norm rows, as the vMF head starts."""
    config = load_config("demo", [*EM, "head.num_prototypes=32"])
    assert config.head.em_concentration == "fixed"
    student = build_student(config)
    state = type("State", (), {})()
    state.config, state.student, state.teacher = config, student, build_student(config)
    state.prototype_em = build_prototype_em(config, student, torch.device("cpu"))
    y = torch.nn.functional.normalize(torch.randn(16, 64), dim=1)  # [N, D] unit rows
    for teacher_temp in (0.04, 0.07):
        step_mod.refit_prototypes(state, y, teacher_temp)
        assert torch.allclose(state.prototype_em.kappa, torch.tensor(1.0 / teacher_temp))
        for network in (state.student, state.teacher):
            norms = head_prototypes(network.cls_head).norm(dim=1)  # [K]
            torch.testing.assert_close(norms, torch.ones(32))


def test_em_refuses_settings_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="set method.koleo_proto=0"):
        load_config("demo", ["head.prototypes='em'"])
    with pytest.raises(ValueError, match="needs head.norm='vmf'"):
        load_config("demo", [*EM, "head.norm='l2'"])
    with pytest.raises(ValueError, match="head.prototypes must be one of"):
        load_config("demo", ["head.prototypes='kmeans'"])
