"""The training loop, top to bottom: set up, resume, then epochs of steps, checkpointing as it goes.

Position in the run is (epoch, batch_in_epoch): the next batch to train on. A checkpoint saves
it with everything else, so a resumed run trains on exactly the batch the interrupted run would
have trained on next. Every step reseeds the RNGs from (seed, step, rank), so augmentation,
masks and drop path of a step do not depend on how the run got there (fresh or resumed).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from fastproto.config import TrainConfig, to_dict, to_toml
from fastproto.data.base import Loader
from fastproto.models import head_prototypes
from fastproto.prototypes import unique_prototypes
from fastproto.train import checkpoint as ckpt
from fastproto.train import distributed
from fastproto.train.health import CollapseWatch, prototype_health
from fastproto.train.inputs import InputMaker, make_train_loader
from fastproto.train.metrics import MetricsLog, memory_mb
from fastproto.train.preflight import check_memory
from fastproto.train.progress import Progress
from fastproto.train.resuming import (
    divergence_advice,
    resume,
    resume_source,
    tidy_run_dir,
    write_failure,
)
from fastproto.train.setup import build_state, network_signature, state_dict
from fastproto.train.signals import StopFlag
from fastproto.train.step import TrainState, train_step
from fastproto.train.usage import prototype_usage
from fastproto.train.values import step_values


@dataclass
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    stopped_by_signal: bool
    last_terms: dict[str, float]
    signal_name: str = ""  # SIGTERM or SIGINT when stopped_by_signal


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from (seed, step, rank)."""
    value = (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def save(
    state: TrainState, run_dir: Path, epoch: int, batch: int, steps_per_epoch: int, is_main: bool
) -> None:
    """Checkpoint the position (epoch, next batch) and everything needed to continue from it."""
    if is_main:
        record = state_dict(state) | {
            "epoch": epoch,
            "batch_in_epoch": batch,
            "steps_per_epoch": steps_per_epoch,
            "rng": ckpt.rng_state(),
            "signature": network_signature(state.config),
            "config": to_dict(state.config),
        }
        try:
            ckpt.save_checkpoint(run_dir, record, state.config.run.keep_last)
        except OSError as err:  # disk full, directory gone read-only
            raise write_failure(err, run_dir) from err
    distributed.barrier()


def prepare_run_dir(config: TrainConfig, is_main: bool) -> Path:
    run_dir = Path(config.run.out)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config))
    return run_dir


def log_step(
    log: MetricsLog,
    state: TrainState,
    terms: dict[str, float],
    values: object,
    images_per_s: float,
) -> dict[str, float]:
    record = (
        dict(terms)
        | vars(values)
        | {
            "images_per_s": images_per_s,
            "memory_mb": memory_mb(state.device),
        }
    )
    log.write("step", state.step, record)
    if state.watch is not None:
        state.watch.update(record)
    return record


def run_epoch(
    state: TrainState,
    loader: Loader,
    inputs: InputMaker,
    epoch: int,
    start: int,
    log: MetricsLog,
    progress: Progress,
    stop: StopFlag,
    run_dir: Path,
    is_main: bool,
) -> tuple[bool, tuple[int, int]]:
    """Train from batch `start` of `epoch` -> (stop now?, next position (epoch, batch))."""
    cfg = state.config
    steps_per_epoch = len(loader)
    position = (epoch + 1, 0)
    tick = time.perf_counter()
    for index, batch in enumerate(loader, start=start):
        seed_step(cfg.run.seed, state.step, inputs.rank)
        global_crops, local_crops, masks = inputs(batch, epoch)
        values = step_values(cfg, state.step, steps_per_epoch)
        terms, _ = train_step(state, global_crops, local_crops, masks, values)
        # the global batch's terms, not rank 0's, and a stop asked of any rank: one read
        terms, stopping = distributed.terms_and_stop(terms, stop.requested, state.device)
        now = time.perf_counter()
        rate = batch.batch_size * inputs.world_size / max(now - tick, 1e-9)
        tick = now
        progress.update(log_step(log, state, terms, values, rate))
        at_end = index + 1 == steps_per_epoch
        position = (epoch + 1, 0) if at_end else (epoch, index + 1)
        done = cfg.run.max_steps > 0 and state.step >= cfg.run.max_steps
        if stopping or done or at_end or state.step % cfg.run.checkpoint_every == 0:
            save(state, run_dir, *position, steps_per_epoch, is_main)
        if stopping or done:
            return True, position
    return False, position


def train(
    config: TrainConfig, require_resume: bool = False, resume_from: str | None = None
) -> RunResult:
    """Train as `config` says, resuming from the newest checkpoint in run.out if there is one
    (or from `resume_from`). Everything is checked before the run directory is written."""
    dist = distributed.setup(config.run.device)
    run_dir = Path(config.run.out)
    source = resume_source(run_dir, require_resume, resume_from)
    loader = make_train_loader(config, dist)
    check_memory(config, dist.device)
    seed_step(config.run.seed, 0, 0)  # every rank builds the same initial weights
    state = build_state(config, dist)
    state.initial_prototypes = head_prototypes(state.teacher.cls_head).detach().clone()
    state.watch = CollapseWatch(
        config.head.num_prototypes, config.optim.warmup_epochs, config.method.koleo_proto
    )
    point = resume(state, source, run_dir, len(loader))
    epoch, start = (point.epoch, point.batch_in_epoch) if point else (0, 0)
    prepare_run_dir(config, dist.is_main)
    if dist.is_main:
        tidy_run_dir(run_dir, point)
    inputs = InputMaker(config, dist)
    log = MetricsLog(run_dir, dist.is_main)
    progress = Progress(config, len(loader), state.step, dist.is_main)
    stop = StopFlag().install()
    stopped = config.run.max_steps > 0 and state.step >= config.run.max_steps
    try:
        while epoch < config.optim.epochs and not stopped:
            loader.set_epoch(epoch)
            loader.resume_from(start)
            stopped, (next_epoch, start) = run_epoch(
                state, loader, inputs, epoch, start, log, progress, stop, run_dir, dist.is_main
            )
            if next_epoch > epoch:
                temp = step_values(config, max(state.step - 1, 0), len(loader)).teacher_temp
                epoch_end(state, log, progress, epoch, temp, dist.is_main)
            epoch = next_epoch
    except FloatingPointError as err:
        raise type(err)(f"{err}; {divergence_advice(run_dir)}") from err
    finally:
        stop.restore()
        progress.close()
        log.close()
        distributed.teardown()
    return RunResult(run_dir, state.step, epoch, stop.requested, progress.last, stop.signal_name)


def epoch_end(
    state: TrainState,
    log: MetricsLog,
    progress: Progress,
    epoch: int,
    teacher_temp: float,
    is_main: bool,
) -> None:
    """Per-epoch record: unique prototypes M at eps 0.025, the redundancy histogram, movement
    and nearest-neighbour distances, used and effective prototypes on a fixed training sample,
    and kNN accuracy (train vs val split, teacher CLS) every run.knn_every_epochs epochs if
    asked; one printed line; the collapse warnings."""
    if not is_main:
        return
    record: dict[str, object] = {"epoch": epoch} | prototype_record(state, teacher_temp)
    every = state.config.run.knn_every_epochs
    if every > 0 and (epoch + 1) % every == 0:
        record["knn_top1"] = knn_now(state)
    log.write("epoch", state.step, record)
    progress.epoch_line(record)
    if state.watch is None:
        return
    unique = cast(int, record["unique_prototypes"])
    for warning in (state.watch.end_epoch(epoch), state.watch.unique_prototypes(epoch, unique)):
        if warning:
            tqdm.write(warning, file=sys.stderr)
            log.write("warning", state.step, {"epoch": epoch, "message": warning})


def prototype_record(state: TrainState, teacher_temp: float) -> dict[str, object]:
    """The teacher's prototypes now: M and its redundancy histogram, movement and
    nearest-neighbour distances, used and effective prototypes and, with EM prototypes, the
    mixture's live components (mass >= min_mass: those its M-step still refits)."""
    # on the training device: at K = 262144 the greedy partition takes minutes on a CPU
    weights = head_prototypes(state.teacher.cls_head).detach().float()
    report = unique_prototypes(weights, eps=0.025)
    redundancy = torch.as_tensor(report.redundancy).long().cpu()
    histogram = torch.bincount(redundancy).tolist() if redundancy.numel() else []
    record: dict[str, object] = {
        "unique_prototypes": int(report.num_unique),
        "num_prototypes": int(weights.shape[0]),
        "largest_duplicate_set": report.largest_duplicate_set,
        "redundancy_histogram": histogram,
    }
    if state.initial_prototypes is not None:
        record |= prototype_health(weights, state.initial_prototypes)
    if state.prototype_em is not None:
        record["em_live_components"] = int((~state.prototype_em.dead()).sum())
    if state.config.data.path:
        record |= prototype_usage(
            state.teacher, state.cls_centering, state.config, teacher_temp, state.device
        )
    return record


def knn_now(state: TrainState) -> dict[str, float]:
    """Weighted kNN (k 10/20, T 0.07) of the current teacher, train split against val split."""
    from fastproto.train.features import knn_accuracy

    cfg = state.config
    return knn_accuracy(state.teacher, cfg, cfg.data.path, state.device)
