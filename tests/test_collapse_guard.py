"""The collapse guard: a short seeded run of the demo recipe in which the prototypes collapse
without KoLeo-proto and stay unique with it. A change that stops either (decay no longer
reaching the prototype matrix, a broken KoLeo-proto gradient, a unique-prototype count that
no longer sees duplicates) fails it.

To collapse in ~1000 steps the prototype matrix alone gets a strong decay (16, held; the
network keeps 0.04), K = 256: the decay clock sum(lr * wd_W) passes ~4 by step 500. Measured
at seed 0 on the 2-core CPU, both arms side by side, one thread each (docs/collapse_demo.md,
"guard"): the baseline went M = 256 (step 500) -> 69 (750) -> 50 (1000); KoLeo-proto 0.1 kept
256, its closest pair at cosine distance 0.28. The bounds (M / K < 0.5 and = 1) leave room.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastproto.train.metrics import read_metrics
from fastproto.train.two_arms import ARMS, Arm, train_arms

GUARD_IMAGES = 8000
GUARD = [
    "head.num_prototypes=256",
    "optim.epochs=4",
    "run.seed=0",
    "run.knn_every_epochs=0",
    "optim.weight_decay=0.04",
    "optim.weight_decay_end=0.04",
    "optim.prototype_weight_decay=16.0",
    "optim.prototype_weight_decay_end=16.0",
]


@pytest.mark.slow
def test_prototypes_collapse_without_koleo_proto_and_stay_unique_with_it(tmp_path: Path) -> None:
    from fastproto.data_prep.prepare import prepare_fashion_mnist

    data = prepare_fashion_mnist(tmp_path / "data", "ffcv", limit=GUARD_IMAGES)
    arms = [Arm(name, weight, tmp_path / name) for name, weight in ARMS.items()]
    assert train_arms(arms, "demo", str(data), 4 * GUARD_IMAGES // 32, GUARD) == 0
    last = {a.name: read_metrics(a.run_dir / "metrics.jsonl", "epoch")[-1] for a in arms}
    base, koleo = last["baseline"], last["koleo-proto"]
    assert base["step"] == koleo["step"] == 1000
    assert base["unique_prototypes"] / base["num_prototypes"] < 0.5, (
        f"without KoLeo-proto M = {base['unique_prototypes']} of 256 after 1000 steps: the "
        "prototypes no longer collapse under strong prototype decay"
    )
    assert koleo["unique_prototypes"] == koleo["num_prototypes"] == 256, (
        f"with KoLeo-proto 0.1 M = {koleo['unique_prototypes']} of 256: it no longer keeps "
        "the prototypes apart"
    )
