"""Worker processes that end with the process that started them.

A worker forked by the converter (FFCV's writer processes, the DALI encoder pool) would keep
running after a `kill -9` of data_prep, still decoding and writing. `die_with_parent()`, called
first thing in the child, asks Linux to send it SIGKILL when its parent dies
(prctl PR_SET_PDEATHSIG) and exits at once when the parent is already gone (the race between
fork and prctl). Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a child: be killed with SIGKILL when the parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect
