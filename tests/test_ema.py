"""Teacher EMA: m = 0 copies, m = 1 keeps, m = 0.5 averages; buffers copied; mismatches refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastproto.ema import ema_update_


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def pair() -> tuple[nn.Module, nn.Module]:
    student = make_net()
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.data.normal_()
    student.train()(torch.randn(8, 4))  # moves the student's batch-norm statistics
    return teacher, student


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 1.0])
def test_parameters_follow_the_formula(momentum: float) -> None:
    teacher, student = pair()
    t0, s0 = dict(teacher.named_parameters()), dict(student.named_parameters())
    t0 = {k: v.detach().clone() for k, v in t0.items()}
    ema_update_(teacher, student, momentum)
    for name, t in teacher.named_parameters():
        expected = momentum * t0[name] + (1 - momentum) * s0[name].detach()
        if momentum in (0.0, 1.0):
            assert torch.equal(t.detach(), s0[name].detach() if momentum == 0 else t0[name])
        else:
            torch.testing.assert_close(t.detach(), expected)
        assert not t.requires_grad or t.grad is None


def test_half_is_the_elementwise_average() -> None:
    teacher, student = pair()
    t0 = snapshot(teacher)
    ema_update_(teacher, student, 0.5)
    w = teacher[0].weight.detach()
    torch.testing.assert_close(w, (t0["0.weight"] + student[0].weight.detach()) / 2)


def test_buffers_are_copied_from_the_student() -> None:
    teacher, student = pair()
    ema_update_(teacher, student, 0.99)
    for (name, t), (_, s) in zip(teacher.named_buffers(), student.named_buffers(), strict=True):
        assert torch.equal(t, s), name


def test_update_builds_no_graph() -> None:
    teacher, student = pair()
    loss = student(torch.randn(8, 4)).sum()
    ema_update_(teacher, student, 0.5)
    assert all(p.grad_fn is None for p in teacher.parameters())
    loss.backward()  # the student's graph is untouched by the in-place teacher update


def test_mismatched_modules_are_refused() -> None:
    teacher, _ = pair()
    with pytest.raises(ValueError, match="do not match"):
        ema_update_(teacher, nn.Sequential(nn.Linear(4, 3)), 0.9)
    other = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="shape"):
        ema_update_(make_net(), other, 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(teacher, make_net(), 1.5)
