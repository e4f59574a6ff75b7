"""data_prep under faults: a writer process that fails (a full disk), a killed converter."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastproto.data_prep import DataPrepError, prepare_imagenet
from image_fixtures import FixtureTree, write_imagenet_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> FixtureTree:
    return write_imagenet_tree(tmp_path_factory.mktemp("tree") / "src", per_class={"train": 2})


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail, instead of hanging, when the call under test has not returned after 60 s."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("the conversion did not return within 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _assert_nothing_left(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))
    assert multiprocessing.active_children() == []


def test_full_disk_in_the_ffcv_writer_fails_clearly(
    tree: FixtureTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadline: None
) -> None:
    from ffcv.memory_allocator import MemoryAllocator

    def disk_full(self: MemoryAllocator) -> None:  # runs in the forked writer process
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(MemoryAllocator, "flush_page", disk_full)
    out = tmp_path / "out"
    with pytest.raises(DataPrepError, match="no space left on the device") as caught:
        prepare_imagenet(tree.root, out, "ffcv", workers=2)
    assert "choose an OUT on another disk" in str(caught.value)
    _assert_nothing_left(out)


def test_ffcv_writer_process_that_dies_is_reported(
    tree: FixtureTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadline: None
) -> None:
    from fastproto.data_prep import ffcv_writer

    def die(self: object, i: int) -> None:
        os._exit(3)  # no Python exception: as if the process were killed

    monkeypatch.setattr(ffcv_writer._SplitImages, "__getitem__", die)
    out = tmp_path / "out"
    with pytest.raises(DataPrepError, match="FFCV writer process failed .exit code 3"):
        prepare_imagenet(tree.root, out, "ffcv")
    _assert_nothing_left(out)


PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from fastproto.data_prep.processes import die_with_parent

    def child(parent):
        die_with_parent(parent)
        time.sleep(120)

    worker = multiprocessing.get_context("fork").Process(target=child, args=(os.getpid(),))
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status and "(zombie)" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_worker_processes_die_with_a_killed_converter() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()  # SIGKILL: no Python clean-up runs in the parent
    parent.wait()
    stop = time.monotonic() + 10
    while _alive(child) and time.monotonic() < stop:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the worker outlived its killed parent"
