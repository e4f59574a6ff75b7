"""Checkpoints that survive crashes: atomic writes, rotation, and loud refusal of bad files.

A checkpoint is one `torch.save` file ``checkpoint-<step>.pt`` in the run directory holding a
dict with ``format`` (FORMAT_VERSION), ``signature`` (what must match to resume: arch, K, head
shape, method), ``config`` (the resolved config tree), ``step``/``epoch``/``batch_in_epoch``
(the exact next batch), the student, teacher, optimizer, scaler and centring state dicts and
the RNG states. It is written by rank 0 only, from unwrapped (not DDP) modules, so a run
written by N processes resumes on M.

Integrity: torch does not check the CRCs of its zip records, so the file ends with a trailer,
``CHECKSUM_MAGIC`` + the SHA-256 of every byte before it (torch.load ignores bytes after the
zip's end, so the file still loads with plain torch.load). `load_checkpoint` checks the digest
before unpickling anything and turns every failure into one CheckpointError.

Writing: temporary file in the same directory (the digest computed as the bytes go out) ->
flush -> fsync -> os.replace -> fsync of the directory, so a crash at any moment leaves either
the old file or the new one, never half.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from fastproto.errors import NonFiniteError

FORMAT_VERSION = 2  # 2: the checksum trailer; batch size and centring in the signature
CHECKSUM_MAGIC = b"fastproto-sha256"
_TRAILER = len(CHECKSUM_MAGIC) + hashlib.sha256().digest_size
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
# what to do about a checkpoint that cannot be used, when the caller knows nothing better
OTHER_CHECKPOINT = "use another checkpoint of the run, or train into a new --out directory"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class _HashingWriter:
    """A write-only file object that hashes what passes through it (torch.save writes in order)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path`, checksum trailer included, so that readers see the old file
    or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            torch.save(obj, writer)  # type: ignore[arg-type]  # only write/flush are used
            handle.write(CHECKSUM_MAGIC + writer.digest.digest())
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


def checkpoint_step(path: Path) -> int:
    """The step in a ``checkpoint-<step>.pt`` name (-1 for any other name)."""
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else -1


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def non_finite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in nested dicts/lists holding NaN or inf."""
    found: list[tuple[str, torch.Tensor]] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found.append((name, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{name}.{i}")

    walk(tree, prefix)
    bad: list[str] = []
    for device in {t.device for _, t in found}:  # one host sync per device
        group = [(n, t) for n, t in found if t.device == device]
        flags = torch.stack([torch.isfinite(t).all() for _, t in group]).tolist()
        bad += [n for (n, _), ok in zip(group, flags, strict=True) if not ok]
    return sorted(bad)


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoint-<step>.pt`` atomically, then delete all but the newest `keep_last`.

    State holding NaN or inf is never written (it would become the checkpoint a rerun resumes
    from): NonFiniteError names the tensors instead."""
    path = run_dir / f"checkpoint-{int(state['step']):09d}.pt"
    bad = non_finite_tensors(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"{path.name} was not written: {shown} hold NaN or inf")
    atomic_save({"format": FORMAT_VERSION, **state}, path)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def verify_checksum(path: Path, advice: str = OTHER_CHECKPOINT) -> None:
    """Refuse a file whose trailer is missing or whose SHA-256 does not match its bytes."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            remaining = size - _TRAILER
            while remaining > 0:
                chunk = handle.read(min(remaining, 1 << 22))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
            trailer = handle.read(_TRAILER)
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({err.strerror}); {advice}"
        ) from err
    if size < _TRAILER or not trailer.startswith(CHECKSUM_MAGIC):
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (no checksum at its end: not a whole "
            f"checkpoint written by this fastproto); {advice}"
        )
    if trailer[len(CHECKSUM_MAGIC) :] != digest.digest():
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (its SHA-256 does not match the checksum "
            f"stored with it); {advice}"
        )


def load_checkpoint(
    path: Path, signature: dict[str, Any] | None = None, advice: str = OTHER_CHECKPOINT
) -> dict[str, Any]:
    """Read and check a checkpoint; raise CheckpointError naming the file and `advice`."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    verify_checksum(path, advice)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the digest matched: a file of ours never gets here
        raise CheckpointError(
            f"checkpoint {path} cannot be unpickled as a fastproto checkpoint "
            f"({type(err).__name__}); {advice}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} has format version {found!r}, this fastproto reads version "
            f"{FORMAT_VERSION}; use it with the fastproto version that wrote it, or start a "
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
