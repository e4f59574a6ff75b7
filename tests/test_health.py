"""Training-health numbers against plain loops, and the uniform-collapse warning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastproto.train.health import (
    COLLAPSE_MARGIN,
    CollapseWatch,
    nearest_neighbour_distances,
    prediction_health,
    prototype_health,
    prototype_movement,
)
from fastproto.vmf import log_normalizer


def _loop_entropy(logits: torch.Tensor) -> float:
    """Mean over rows of -sum_k p_k log p_k, one row at a time."""
    values = []
    for row in logits.double():
        p = torch.exp(row - row.max())
        p = p / p.sum()
        values.append(float(-(p * torch.log(p)).sum()))
    return sum(values) / len(values)


def test_prediction_health_matches_the_formulas() -> None:
    torch.manual_seed(0)
    k, d = 37, 8
    s_y = F.normalize(torch.randn(50, d), dim=1)
    t_y = F.normalize(torch.randn(40, d), dim=1)
    w_s, w_t = torch.randn(k, d), torch.randn(k, d)
    center = torch.randn(k)
    got = prediction_health(s_y, t_y, w_s, w_t, center, 0.1, 0.04, vmf=True)
    rows = 32  # the health numbers use the first 32 rows of each side
    a = s_y[:rows] @ w_s.T / 0.1 + log_normalizer(w_s.norm(dim=1) / 0.1, d)
    b = t_y[:rows] @ w_t.T / 0.04 + log_normalizer(w_t.norm(dim=1) / 0.04, d) - center
    assert math.isclose(got["student_entropy_per_sample"], _loop_entropy(a), rel_tol=1e-5)
    assert math.isclose(got["teacher_entropy_per_sample"], _loop_entropy(b), rel_tol=1e-5)
    std_t = sum(float(r.double().std()) for r in b) / rows
    assert math.isclose(got["teacher_logit_std"], std_t, rel_tol=1e-5)


def test_uniform_predictions_read_log_k_and_peaked_ones_read_zero() -> None:
    k, d = 64, 4
    y = F.normalize(torch.ones(8, d), dim=1)
    flat = prediction_health(
        y, y, torch.zeros(k, d), torch.zeros(k, d), torch.zeros(k), 0.1, 0.1, vmf=False
    )
    assert math.isclose(flat["teacher_entropy_per_sample"], math.log(k), rel_tol=1e-9)
    assert flat["teacher_logit_std"] == 0.0
    w = torch.zeros(k, d)
    w[0] = y[0] * 50  # one prototype far ahead of the rest
    peaked = prediction_health(y, y, w, w, torch.zeros(k), 0.1, 0.1, vmf=False)
    assert peaked["teacher_entropy_per_sample"] < 1e-6


def test_nearest_neighbour_distances_match_brute_force() -> None:
    torch.manual_seed(1)
    w = torch.randn(300, 5)
    w[7] = 2.0 * w[3]  # a duplicate pair at distance 0
    got = nearest_neighbour_distances(w, sample=300, chunk=64)
    cos = F.normalize(w, dim=1) @ F.normalize(w, dim=1).T
    cos.fill_diagonal_(-2.0)
    want = (1 - cos.max(dim=1).values).clamp_min(0)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want[order], atol=1e-6, rtol=0)
    assert got.min() < 1e-6
    assert nearest_neighbour_distances(w, sample=50).shape == (50,)


def test_prototype_movement_and_epoch_record() -> None:
    torch.manual_seed(2)
    w0 = torch.randn(100, 6)
    assert prototype_movement(3.0 * w0, w0) < 1e-6  # scaling is not movement
    assert math.isclose(prototype_movement(-w0, w0), 2.0, rel_tol=1e-6)
    record = prototype_health(w0.clone(), w0)
    quantiles = record["nn_distance_quantiles"]
    assert list(quantiles) == ["p0", "p5", "p25", "p50", "p75", "p95"]  # type: ignore[arg-type]
    values = list(quantiles.values())  # type: ignore[union-attr]
    assert values == sorted(values) and values[0] > 0.025
    assert record["nn_distance_below_eps"] == 0.0


def test_collapse_warning_fires_once_after_a_flat_epoch_past_warm_up() -> None:
    k = 256
    flat = math.log(k) - COLLAPSE_MARGIN / 2
    watch = CollapseWatch(k, warmup_epochs=1)
    for _ in range(5):
        watch.update({"teacher_entropy_per_sample": flat})
    assert watch.end_epoch(0) is None  # still warming up
    for value in (flat, flat - 0.5, flat):  # one sharper step: not a whole flat epoch
        watch.update({"teacher_entropy_per_sample": value})
    assert watch.end_epoch(1) is None
    for _ in range(3):
        watch.update({"teacher_entropy_per_sample": flat})
    message = watch.end_epoch(2)
    assert message is not None and "uniform collapse" in message
    assert "optim.momentum_teacher" in message and "augment.blur_p" in message
    for _ in range(3):
        watch.update({"teacher_entropy_per_sample": flat})
    assert watch.end_epoch(3) is None  # once per run


@pytest.mark.gpu
def test_epoch_end_analyses_the_prototypes_on_the_training_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the greedy partition and the neighbour distances run where the weights live: on a GPU
    # they take seconds at K = 262144 where a copy to the CPU took minutes
    from fastproto import prototypes
    from fastproto.config import load_config
    from fastproto.train import loop
    from fastproto.train.distributed import DistInfo
    from fastproto.train.metrics import MetricsLog
    from fastproto.train.progress import Progress
    from fastproto.train.setup import build_state

    device = torch.device("cuda")
    config = load_config(
        "demo", ["head.num_prototypes=4096", "run.knn_every_epochs=0", "run.device='cuda'"]
    )
    state = build_state(config, DistInfo(0, 1, 0, device))
    state.initial_prototypes = state.teacher.cls_head.prototypes().detach().clone()
    seen: list[torch.device] = []
    original = prototypes.unique_prototypes

    def spy(weights: torch.Tensor, eps: float = 0.025, block_size: int = 4096):  # type: ignore[no-untyped-def]
        seen.append(weights.device)
        return original(weights, eps, block_size)

    monkeypatch.setattr(loop, "unique_prototypes", spy)
    log = MetricsLog(tmp_path, enabled=True)
    loop.epoch_end(state, log, Progress(config, 1, 0, False), 0, 0.04, is_main=True)
    log.close()
    assert seen and seen[0].type == "cuda"
    record = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record[-1]["unique_prototypes"] == 4096
    assert record[-1]["prototype_movement"] == pytest.approx(0.0, abs=1e-6)


def test_partial_collapse_warning_fires_once_below_nine_tenths_and_names_koleo_proto() -> None:
    watch = CollapseWatch(1000, warmup_epochs=0, koleo_proto=0.0)
    assert watch.unique_prototypes(0, 1000) is None
    assert watch.unique_prototypes(1, 900) is None  # M / K = 0.9 is not below 0.9
    message = watch.unique_prototypes(2, 899)
    assert message is not None and "M = 899 of K = 1000" in message
    assert "method.koleo_proto" in message and "now 0" in message
    assert watch.unique_prototypes(3, 100) is None  # once per run


def test_assignment_usage_matches_a_loop_over_images() -> None:
    from fastproto.kernels.reference import prototype_bias

    from fastproto.train.usage import assignment_usage

    torch.manual_seed(0)
    k, d, n, temp = 12, 5, 37, 0.1
    protos = torch.randn(k, d) * 2
    protos[5:] = protos[0]  # seven copies of prototype 0: at most 6 distinct winners
    y = F.normalize(torch.randn(n, d), dim=1)
    center = torch.randn(k) * 0.1
    got = assignment_usage(y, protos, center, temp, vmf=True, chunk=10)
    bias = prototype_bias(protos.double(), temp, True) - center.double()
    winners, mean = set(), torch.zeros(k, dtype=torch.float64)
    for row in y.double():
        logits = [float(protos[j].double() @ row / temp + bias[j]) for j in range(k)]
        winners.add(max(range(k), key=lambda j: logits[j]))
        mean += torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0) / n
    assert got["used_prototypes"] == len(winners) <= 6
    effective = math.exp(-sum(float(p) * math.log(float(p)) for p in mean))
    assert got["effective_prototypes"] == pytest.approx(effective, rel=1e-6)  # float32 logits
