"""Under DDP the logged loss terms are the mean over ranks, not rank 0's own, and a stop asked of
one rank stops all (two gloo ranks; both ride in one all-reduce)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastproto.train.distributed import mean_terms, terms_and_stop

TERMS = [
    {"loss": 1.0, "dino": 0.5, "ibot": 0.25, "grad_norm": 2.0},
    {"loss": 3.0, "dino": 1.5, "grad_norm": 2.0},  # no masked tokens on this rank: no ibot term
]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cpu = torch.device("cpu")
        torch.save(mean_terms(TERMS[rank], cpu), Path(out_dir) / f"{rank}.pt")
        for asking in (None, 0, 1):  # nobody, rank 0, rank 1 was signalled
            got = terms_and_stop(TERMS[rank], rank == asking, cpu)
            torch.save(got, Path(out_dir) / f"{rank}-stop-{asking}.pt")
    finally:
        dist.destroy_process_group()


def test_logged_terms_are_the_mean_over_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    want = {"loss": 2.0, "dino": 1.0, "ibot": 0.25, "grad_norm": 2.0}
    for rank in range(2):
        assert torch.load(tmp_path / f"{rank}.pt") == want
    for rank in range(2):
        for asking in (None, 0, 1):
            terms, stop = torch.load(tmp_path / f"{rank}-stop-{asking}.pt")
            assert terms == want and stop == (asking is not None), (rank, asking)
    assert mean_terms(TERMS[1], torch.device("cpu")) == TERMS[1]  # one process: as it was
    assert terms_and_stop(TERMS[1], True, torch.device("cpu")) == (TERMS[1], True)
