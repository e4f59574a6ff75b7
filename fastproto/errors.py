"""Errors that mean "the run cannot go on as asked", reported by `fastproto` as one line.

Input and file problems are ValueError subclasses (CheckpointError among them); a run whose
numbers went NaN or infinite raises NonFiniteError. The command line catches these, OSError
(disk full, read-only directory) and allocator failures, and nothing else, so a genuine bug
still shows its traceback.
"""

from __future__ import annotations

import errno


class NonFiniteError(FloatingPointError):
    """The loss, the gradients or the state went NaN or infinite; nothing of it was kept."""


def is_allocation_failure(err: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or its CPU allocator's "can't allocate memory"."""
    import torch

    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def user_message(err: BaseException) -> str:
    """One line for the user: what is wrong and what to do."""
    if isinstance(err, OSError):
        fixes = {
            errno.ENOSPC: "free disk space (or lower run.keep_last) and rerun; training resumes "
            "from the newest checkpoint",
            errno.EACCES: "choose a directory you can write to (--out) or change its permissions",
            errno.EROFS: "the file system is read-only; choose another --out",
        }
        fixes[errno.EPERM] = fixes[errno.EACCES]
        where = f": {err.filename}" if err.filename else ""
        fix = fixes.get(err.errno or 0, "check the path, its permissions and the free disk space")
        return f"{err.strerror or err}{where}; {fix}"
    if is_allocation_failure(err):
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "MemoryError"
        return (
            f"out of memory ({first}); lower --K, --batch-size or the model size, or use a "
            "device with more memory"
        )
    return str(err)
