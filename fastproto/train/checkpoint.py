"""Checkpoints that survive crashes: atomic writes, rotation, and loud refusal of bad files.

A checkpoint is one `torch.save` file ``checkpoint-<step>.pt`` in the run directory holding a
dict with ``format`` (FORMAT_VERSION), ``signature`` (what must match to resume: arch, K, head
shape, method), ``config`` (the resolved config tree), ``step``/``epoch``/``batch_in_epoch``
(the exact next batch), the student, teacher, optimizer, scaler and centring state dicts and
the RNG states. It is written by rank 0 only, from unwrapped (not DDP) modules, so a run
written by N processes resumes on M.

Writing: temporary file in the same directory -> flush -> fsync -> os.replace -> fsync of the
directory, so a crash at any moment leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints in `run_dir`, oldest (lowest step) first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoint-<step>.pt`` atomically, then delete all but the newest `keep_last`."""
    path = run_dir / f"checkpoint-{int(state['step']):09d}.pt"
    atomic_save({"format": FORMAT_VERSION, **state}, path)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and check a checkpoint; raise CheckpointError naming the file and the fix."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); delete it "
            "to resume from the previous checkpoint, or train into a new --out directory"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} has format version {found!r}, this fastproto reads version "
            f"{FORMAT_VERSION}; resume it with the fastproto version that wrote it, or start a "
            "new run in a new --out directory"
        )
    if signature is not None:
        check_signature(path, state.get("signature", {}), signature)
    return state


def check_signature(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model differs (arch, K, head, method) from the config."""
    diffs = [
        f"{key}: checkpoint has {found.get(key)!r}, config asks for {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} does not match this configuration ({'; '.join(diffs)}); "
            "use the same settings to resume, or train into a new --out directory"
        )


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states, as tensors and plain types."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA only where the device count matches)."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(value: Any) -> Any:
    """torch.load may give lists back where tuples went in; random.setstate needs tuples."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value
