"""Two gloo processes with half the batch each take the same step as one process with all of it.

Same initial weights, same crops and masks (no augmentation randomness: the step is fed
prepared float crops), drop path off, K below the KoLeo group size (one group, no random
partition). DDP averages the gradients of the two halves; every loss term is a mean over
images, and the centring statistics are all-reduced, so loss, centring state and parameters
after the step must agree with the single process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastproto.config import load_config
from fastproto.masked_tokens import MaskedTokens
from fastproto.train.distributed import DistInfo
from fastproto.train.setup import build_state
from fastproto.train.step import StepValues, train_step

G, L, B = 2, 2, 8
VALUES = StepValues(
    lr=1e-3,
    weight_decay=0.04,
    prototype_weight_decay=0.04,
    prototype_decay_clock=4e-5,
    teacher_temp=0.05,
    momentum=0.9,
    freeze_last_layer=False,
)


def _config():  # type: ignore[no-untyped-def]
    return load_config(
        "demo",
        [
            "model.arch=vit_pico_patch4_28",
            "data.local_size=12",
            "model.drop_path=0.0",
            "head.num_prototypes=32",
            "method.name='ibot'",
            "method.koleo_data=0.0",
            "head.hidden_dim=32",
            "head.bottleneck_dim=16",
            "optim.batch_size=8",
            "method.loss_impl=chunked",
            "run.device=cpu",
        ],
    )


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(G * B, 3, 28, 28, generator=gen)
    loc = torch.randn(L * B, 3, 12, 12, generator=gen)
    masks = torch.rand(G * B, 7, 7, generator=gen) < 0.4
    return g, loc, masks


def _rows(x: torch.Tensor, crops: int, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s images of crop-major rows [crops*B, ...] -> [crops*B/world, ...]."""
    per = B // world
    return x.reshape(crops, B, *x.shape[1:])[:, rank * per : (rank + 1) * per].flatten(0, 1)


def _step(rank: int, world: int) -> dict[str, object]:
    torch.manual_seed(0)
    state = build_state(_config(), DistInfo(rank, world, 0, torch.device("cpu")))
    g, loc, masks = _inputs()
    torch.manual_seed(1)
    terms, _ = train_step(
        state,
        _rows(g, G, rank, world),
        _rows(loc, L, rank, world),
        MaskedTokens.from_grid(_rows(masks, G, rank, world)),
        VALUES,
    )
    return {
        "terms": terms,
        "student": {k: v.clone() for k, v in state.student.state_dict().items()},
        "grad": {
            k: p.grad.clone() for k, p in state.student.named_parameters() if p.grad is not None
        },
        "teacher": {k: v.clone() for k, v in state.teacher.state_dict().items()},
        "center": {k: v.clone() for k, v in state.cls_centering.state_dict().items()}
        | {f"patch.{k}": v.clone() for k, v in state.patch_centering.state_dict().items()},
    }


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _step(rank, world)
        loss = torch.tensor([result["terms"]["loss"]], dtype=torch.float64)  # type: ignore[index]
        dist.all_reduce(loss)
        result["mean_loss"] = float(loss) / world
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path) -> None:
    single = _step(0, 1)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["mean_loss"] == pytest.approx(single["terms"]["loss"], rel=1e-5)
    # Gradients (DDP's average of the halves) must match tightly. Parameters after AdamW's first
    # step move by about lr * sign(grad), so a gradient that is zero up to rounding (e.g. the
    # key bias, to which softmax is invariant) may move by +-lr either way: tolerance lr / 10.
    tolerances = {"grad": 1e-6, "center": 1e-6, "student": 1e-4, "teacher": 1e-5}
    for part, atol in tolerances.items():
        assert single[part].keys() == ranks[0][part].keys()
        for name, value in single[part].items():
            for r in ranks:  # every rank holds the same, single-process state
                where = f"{part}.{name}"
                torch.testing.assert_close(
                    r[part][name], value, rtol=1e-4, atol=atol, msg=lambda m, w=where: f"{w}: {m}"
                )
    moved = any(
        not torch.equal(single["student"][k], v)
        for k, v in build_state(_config(), DistInfo(0, 1, 0, torch.device("cpu")))
        .student.state_dict()
        .items()
    )
    assert moved  # the step really changed the weights (sanity of the comparison)
