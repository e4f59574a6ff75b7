"""Stop cleanly on SIGTERM/SIGINT: the handler only sets a flag; the loop checkpoints at the
next step boundary and exits (a signal handler must not write files or touch tensors).

`fastproto train` then says where the checkpoint is and exits 128 + the signal's number (143
for SIGTERM, 130 for SIGINT), as shells and schedulers expect of a process stopped by a
signal, so a stopped run never looks like a finished one."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopFlag:
    """Set by SIGTERM or SIGINT; `requested` is polled once per step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> StopFlag:
        """Install the handlers (main thread only; elsewhere it is a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def stopped_message(signal_name: str, step: int, checkpoint: object) -> tuple[str, int]:
    """-> (the line to print, the exit status) for a run stopped by `signal_name`."""
    status = 128 + int(signal.Signals[signal_name]) if signal_name else 1
    line = (
        f"stopped by {signal_name or 'a signal'} at step {step}; checkpoint {checkpoint}; "
        "rerun the same command to resume from it"
    )
    return line, status
