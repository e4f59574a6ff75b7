"""FFCV's DatasetWriter with workers that are watched, and that die with the converter.

ffcv 1.0.2's `DatasetWriter._write_common` starts its worker processes and then loops until
their shared counter reaches the number of samples. A worker that dies (a full disk: ENOSPC
while it flushes a page) never moves the counter again, so the converter waited forever while
the partial file kept its space. `WatchedWriter` runs the same steps (header, work queue,
workers, allocations, `finalize`) but checks the workers' exit codes while it waits: when one
fails it kills the others and raises `WriterError` with the worker's own error, and the
caller removes the partial file. Each worker first calls `processes.die_with_parent`, so a
`kill -9` of data_prep does not leave writers running.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from multiprocessing import Process, Queue, Value
from queue import Empty
from typing import Any

from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter
from tqdm import tqdm

from .processes import die_with_parent
from .sources import DataPrepError

_POLL_S = 0.1


class WriterError(DataPrepError):
    """An FFCV writer process failed; `errno` is its OSError's errno, if it had one."""

    def __init__(self, message: str, error_number: int | None) -> None:
        super().__init__(message)
        self.errno = error_number


def _watched_job(work_fn: Callable[..., None], parent: int, errors: Any, args: tuple) -> None:
    """A writer process: die with the parent; report any failure before exiting with 1."""
    die_with_parent(parent)
    try:
        work_fn(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent
        errors.put((getattr(exc, "errno", None), f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


class WatchedWriter(DatasetWriter):
    """DatasetWriter whose parent notices a failed worker (see the module docstring)."""

    def _write_common(
        self, num_samples: int, queue_content: Any, work_fn: Callable[..., None], extra: tuple
    ) -> None:
        self.num_samples = num_samples
        self.prepare()
        work: Queue = Queue()
        for todo in queue_content:
            work.put(todo)
        for _ in range(self.num_workers):
            work.put(None)  # one end marker per worker
        allocations: Queue = Queue()
        errors: Queue = Queue()
        done = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        args = (
            work,
            self.metadata_sm,
            self.metadata_type,
            self.fields,
            allocator,
            done,
            allocations,
            *extra,
        )
        job = (work_fn, os.getpid(), errors, args)
        workers = [Process(target=_watched_job, args=job) for _ in range(self.num_workers)]
        try:
            for p in workers:
                p.start()
            self._wait_for_samples(workers, done, errors)
            table = [row for _ in workers for row in _get(allocations, workers, errors)]
            self.finalize(table)
        finally:
            for p in workers:
                if p.is_alive():
                    p.kill()
                p.join()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _wait_for_samples(self, workers: list[Process], done: Any, errors: Any) -> None:
        with tqdm(total=self.num_samples) as progress:
            while progress.n < self.num_samples:
                _check(workers, errors)
                progress.update(int(done.value) - progress.n)
                time.sleep(_POLL_S)


def _get(queue: Any, workers: list[Process], errors: Any) -> Any:
    """The next item of `queue`, failing instead of waiting when a worker has failed."""
    while True:
        try:
            return queue.get(timeout=_POLL_S)
        except Empty:
            _check(workers, errors)


def _check(workers: list[Process], errors: Any) -> None:
    failed = [p for p in workers if p.exitcode not in (None, 0)]
    if not failed:
        return
    try:
        number, message = errors.get(timeout=1.0)
    except Empty:
        number, message = None, f"exit code {failed[0].exitcode}"
    raise WriterError(f"an FFCV writer process failed ({message})", number)


def is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
