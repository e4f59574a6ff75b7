"""head.prototypes = "em": the trainer fits the CLS prototypes by online EM instead of the
gradient, keeps them out of the optimizer, and resumes them exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import data_dirs, tiny_config  # noqa: F401  (data_dirs is a fixture)

from fastproto.config import load_config
from fastproto.train.checkpoint import latest_checkpoint, load_checkpoint
from fastproto.train.loop import train

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


def test_em_refuses_settings_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match="set method.koleo_proto=0"):
        load_config("demo", ["head.prototypes='em'"])
    with pytest.raises(ValueError, match="needs head.norm='vmf'"):
        load_config("demo", [*EM, "head.norm='l2'"])
    with pytest.raises(ValueError, match="head.prototypes must be one of"):
        load_config("demo", ["head.prototypes='kmeans'"])
