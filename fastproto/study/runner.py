"""`fastproto sweep`: train and evaluate every run of a grid, one JSON per run, resumable.

Layout under the sweep directory OUT::

    OUT/<run_id>/             the trainer's run directory (checkpoints, metrics, config.toml)
    OUT/results/<run_id>.json  the run's record: settings, config, metrics, timings, status

A record's status is "running" while the run trains, then "ok", "failed" (with the error and
its traceback) or "interrupted". Rerunning the sweep skips runs whose record says "ok" and
starts the others again; the trainer resumes from the newest checkpoint in the run directory,
so an interrupted run continues where it stopped. A failed run does not stop the sweep; an
interrupt (Ctrl-C, SIGTERM) stops it after the trainer's own checkpoint. Records are written
atomically (temporary file, fsync, rename), so a record is either the old one or the new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fastproto.config import TrainConfig, load_config, to_dict
from fastproto.study.grid import Grid, RunSpec

TrainFn = Callable[[TrainConfig], Any]
EvaluateFn = Callable[[Path, str, torch.device, dict[str, Any]], dict[str, Any]]


@dataclass
class SweepSummary:
    """What one `run_sweep` call did, by run id."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: bool = False


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2, default=float) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def read_record(path: Path) -> dict[str, Any] | None:
    """A run record, or None when missing or unreadable (then the run is redone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _git(root: Path, *args: str, check: bool = False) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=check, timeout=10
    )
    return done.stdout.strip()


def git_commit() -> str:
    """The source tree's commit (with '+dirty' for uncommitted tracked changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = _git(root, "rev-parse", "HEAD", check=True)
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _default_train(config: TrainConfig) -> Any:
    from fastproto.train.loop import train

    return train(config)


def _default_evaluate(
    run_dir: Path, data: str, device: torch.device, options: dict[str, Any]
) -> dict[str, Any]:
    from fastproto.study.evaluate import evaluate_run_dir

    return evaluate_run_dir(run_dir, data, device, options)


def run_config(grid: Grid, spec: RunSpec, run_dir: Path) -> TrainConfig:
    """Recipe, then the grid's overrides, then the run's; run.out is the run directory."""
    config = load_config(grid.recipe, grid.overrides + list(spec.overrides))
    config.run.out = str(run_dir)
    config.run.progress = False  # the sweep draws one bar over all runs
    if not config.data.path:
        from fastproto.train.demo import ensure_demo_data

        config.data.path = str(ensure_demo_data(config.data.backend, grid.demo_images))
    return config


def _device(config: TrainConfig) -> torch.device:
    wants_cuda = config.run.device != "cpu" and torch.cuda.is_available()
    return torch.device("cuda" if wants_cuda else "cpu")


def _train_and_evaluate(
    grid: Grid,
    spec: RunSpec,
    run_dir: Path,
    record: dict[str, Any],
    train_fn: TrainFn,
    evaluate_fn: EvaluateFn,
) -> bool:
    """Fill `record` in place; -> False when the trainer stopped on a signal."""
    from fastproto.train.checkpoint import latest_checkpoint

    config = run_config(grid, spec, run_dir)
    record["config"] = to_dict(config)
    found = latest_checkpoint(run_dir)
    record["resumed_from"] = found.name if found else None
    start = time.perf_counter()
    result = train_fn(config)
    record["timings"]["train_s"] = time.perf_counter() - start
    record["train"] = {
        "step": int(result.step),
        "epoch": int(result.epoch),
        "last_terms": dict(result.last_terms),
    }
    if result.stopped_by_signal:
        return False
    start = time.perf_counter()
    record["metrics"] = evaluate_fn(run_dir, config.data.path, _device(config), grid.eval)
    record["timings"]["eval_s"] = time.perf_counter() - start
    return True


def run_one(
    grid: Grid,
    spec: RunSpec,
    out: Path,
    commit: str,
    train_fn: TrainFn = _default_train,
    evaluate_fn: EvaluateFn = _default_evaluate,
) -> dict[str, Any]:
    """Train and evaluate one run, recording it; exceptions become a 'failed' record."""
    path = out / "results" / f"{spec.run_id}.json"
    record: dict[str, Any] = {
        "run_id": spec.run_id,
        "groups": list(spec.groups),
        "settings": spec.settings,
        "overrides": grid.overrides + list(spec.overrides),
        "recipe": grid.recipe,
        "commit": commit,
        "status": "running",
        "started": _now(),
        "timings": {},
    }
    write_json_atomic(record, path)
    start = time.perf_counter()
    try:
        finished = _train_and_evaluate(grid, spec, out / spec.run_id, record, train_fn, evaluate_fn)
        record["status"] = "ok" if finished else "interrupted"
    except Exception as err:  # a failed run is recorded; the sweep goes on
        record |= {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
    except BaseException:  # KeyboardInterrupt, SystemExit: record, then stop the sweep
        record["status"] = "interrupted"
        raise
    finally:
        record["timings"]["total_s"] = time.perf_counter() - start
        record["finished"] = _now()
        write_json_atomic(record, path)
    return record


def run_sweep(
    grid: Grid,
    out: Path,
    train_fn: TrainFn = _default_train,
    evaluate_fn: EvaluateFn = _default_evaluate,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> SweepSummary:
    """Run every pending run of `grid` under `out`; skips runs already recorded as ok.

    `shard` (i, n): only the runs at grid positions p with p % n == i, so that n processes can
    share one sweep directory (each run has its own directory and record)."""
    from tqdm import tqdm

    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= i < n, e.g. --shard 0/2")
    summary = SweepSummary()
    pending = []
    for spec in grid.runs[index::count]:
        old = read_record(out / "results" / f"{spec.run_id}.json")
        if old is not None and old.get("status") == "ok":
            summary.skipped.append(spec.run_id)
        else:
            pending.append(spec)
    commit = git_commit()
    bar = tqdm(
        total=len(pending),
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
        desc=f"sweep ({len(summary.skipped)} done before)",
    )
    try:
        for spec in pending:
            bar.set_postfix_str(spec.run_id)
            record = run_one(grid, spec, out, commit, train_fn, evaluate_fn)
            summary.ran.append(spec.run_id)
            if record["status"] == "failed":
                summary.failed.append(spec.run_id)
                bar.write(f"run {spec.run_id} failed: {record['error']}")
            if record["status"] == "interrupted":
                summary.stopped = True
                break
            bar.update(1)
    finally:
        bar.close()
    return summary
