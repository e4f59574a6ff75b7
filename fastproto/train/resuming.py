"""Where a run continues from, decided and checked before the run directory is written to.

`resume_source` picks the checkpoint: the one named by --resume-from, else the newest in
run.out (None: a fresh start; with --resume that is an error, raised before any directory is
made). `resume` loads it into the freshly built state and refuses, with one CheckpointError
naming the file and what to do, a checkpoint whose signature (network, centring, batch size),
steps per epoch (another data set) or state dicts do not fit this configuration, and a named
checkpoint older than checkpoints already in run.out (the resumed run would rotate its own
checkpoints away and a later rerun would resume from the newer ones). `tidy_run_dir` then
drops metrics.jsonl rows past the resumed step (the resumed run writes them again) and removes
checkpoint temporaries a crash left behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fastproto.train import checkpoint as ckpt
from fastproto.train.setup import load_state_dict, network_signature
from fastproto.train.step import TrainState


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int
    epoch: int
    batch_in_epoch: int


def resume_source(run_dir: Path, required: bool, resume_from: str | None) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start; checked before any writing."""
    if resume_from:
        path = Path(resume_from)
        if not path.is_file():
            raise ValueError(f"--resume-from {path}: no such file; name a checkpoint-*.pt file")
        return path
    newest = ckpt.latest_checkpoint(run_dir)
    if newest is None and required:
        where = "in" if run_dir.is_dir() else "in (the directory does not exist)"
        raise ValueError(
            f"--resume: no checkpoint-*.pt {where} {run_dir}; check --out, or drop --resume to "
            "start a new run there"
        )
    return newest


def bad_checkpoint_advice(path: Path, run_dir: Path) -> str:
    """What to do about a checkpoint that cannot be resumed from."""
    found = ckpt.list_checkpoints(run_dir)
    if path not in found:  # named with --resume-from
        return "name another checkpoint with --resume-from, or drop it to resume from --out"
    earlier = found[: found.index(path)]
    instead = f"resume from {earlier[-1].name}" if earlier else "start afresh"
    return (
        f"delete it to {instead}, resume from a named checkpoint with --resume-from PATH and a new "
        "--out, or train into a new --out directory"
    )


def divergence_advice(run_dir: Path) -> str:
    """After a NaN/inf: which checkpoint is the newest good one, and how to go on from it."""
    newest = ckpt.latest_checkpoint(run_dir)
    if newest is None:
        return "no checkpoint was written yet; lower optim.lr (or raise method.student_temp)"
    return (
        f"no checkpoint holds it; the newest good checkpoint is {newest}: lower optim.lr (or raise "
        "method.student_temp) and rerun to resume from it, or resume from an earlier one with "
        "--resume-from PATH and a new --out"
    )


def write_failure(err: OSError, run_dir: Path) -> OSError:
    """An OSError from writing a checkpoint, saying which checkpoint is still whole."""
    newest = ckpt.latest_checkpoint(run_dir)
    kept = f"the newest whole checkpoint is {newest.name}" if newest else "none was written yet"
    text = f"{err.strerror or err} while writing a checkpoint into {run_dir} ({kept})"
    return OSError(err.errno, text, err.filename)


def resume(
    state: TrainState, path: Path | None, run_dir: Path, steps_per_epoch: int
) -> ResumePoint | None:
    """Load `path` into `state` (and the RNGs) -> where to continue; None: nothing to load."""
    if path is None:
        return None
    advice = bad_checkpoint_advice(path, run_dir)
    saved = ckpt.load_checkpoint(path, network_signature(state.config), advice)
    step = int(saved["step"])
    if saved.get("steps_per_epoch") != steps_per_epoch:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was written at {saved.get('steps_per_epoch')} steps per epoch, "
            f"this data and batch size give {steps_per_epoch}: its position inside the epoch and "
            "its schedules would mean other steps; resume with the same data, or train into a "
            "new --out directory"
        )
    newer = [p.name for p in ckpt.list_checkpoints(run_dir) if ckpt.checkpoint_step(p) > step]
    if newer:
        raise ckpt.CheckpointError(
            f"--resume-from {path}: {run_dir} holds newer checkpoints ({', '.join(newer)}), which "
            "a later rerun would resume from and which would rotate this run's own away; resume "
            "into a new --out directory, or delete those first"
        )
    try:
        load_state_dict(state, saved)
        ckpt.set_rng_state(saved["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ckpt.CheckpointError(
            f"checkpoint {path} does not fit the state this configuration builds "
            f"({type(err).__name__}: {first[:200]}); resume with the settings it was written "
            "with, or train into a new --out directory"
        ) from err
    return ResumePoint(path, step, int(saved["epoch"]), int(saved["batch_in_epoch"]))


# atomic_save's temporary files for checkpoints: ".checkpoint-<step>.pt.<random>.tmp"
_TEMP = re.compile(r"^\.checkpoint-\d+\.pt\.[A-Za-z0-9_]+\.tmp$")


def remove_orphan_temps(run_dir: Path) -> list[Path]:
    """Delete checkpoint temporaries a crash left behind: only files of our own temp pattern,
    and only those older than the newest checkpoint (a write in flight is newer). -> removed."""
    newest = ckpt.latest_checkpoint(run_dir)
    if newest is None:
        return []
    cutoff = newest.stat().st_mtime
    removed = []
    for path in run_dir.iterdir():
        if _TEMP.match(path.name) and path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics.jsonl rows past `step` (written after the checkpoint a run resumes
    from; the resumed run writes them again), atomically: a crash leaves the old file or the
    new one."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or _row_step(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):  # a torn last line: drop it
        return 1 << 62


def tidy_run_dir(run_dir: Path, point: ResumePoint | None) -> None:
    """On resume (rank 0): orphan checkpoint temporaries go, metrics rows past the step too."""
    if point is None:
        return
    remove_orphan_temps(run_dir)
    truncate_metrics(run_dir / "metrics.jsonl", point.step)
    print(
        f"resumed from {point.path} at step {point.step} (epoch {point.epoch}, batch "
        f"{point.batch_in_epoch})",
        flush=True,
    )
