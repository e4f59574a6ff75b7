"""Shared benchmark plumbing: timing with warm-up and percentiles, peak memory, and the CSV schema.

Every benchmark appends rows with the same columns to a CSV under bench/results/:
op, impl, shape, metric, unit, p50, p20, p80, device, versions, commit, date.
"""

from __future__ import annotations

import csv
import datetime as dt
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = (
    "op",
    "impl",
    "shape",
    "metric",
    "unit",
    "p50",
    "p20",
    "p80",
    "device",
    "versions",
    "commit",
    "date",
)


@dataclass(frozen=True)
class Timing:
    p50: float
    p20: float
    p80: float


def percentiles(samples: list[float]) -> Timing:
    """Median and 20th/80th percentiles of `samples` (at least one)."""
    if len(samples) == 1:
        return Timing(samples[0], samples[0], samples[0])
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return Timing(statistics.median(samples), q[1], q[7])


L2_FLUSH_BYTES = 256 * 2**20  # more than any GPU's L2 cache (H200: 60 MB)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Seconds per call of `fn`: `warmup` untimed calls, then `repeats` timed ones."""
    return time_and_peak(fn, device, warmup, repeats)[0]


@dataclass(frozen=True)
class CudaMemory:
    """Bytes allocated when the timed calls began, and the peak during them."""

    at_start: int
    peak: int

    @property
    def extra(self) -> int:
        """What the calls allocated on top of what was already held."""
        return self.peak - self.at_start


def time_and_peak(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, flush_l2: bool = True
) -> tuple[Timing, CudaMemory | None]:
    """(seconds per call, CUDA memory during the timed calls or None on CPU).

    On CUDA each timed call is bracketed by CUDA events, and with `flush_l2` a buffer bigger
    than the L2 cache is zeroed before it (as triton's do_bench does, so a call does not find
    its inputs in L2). That buffer is allocated before the peak is reset, so `extra` is that of
    plain calls of `fn` (do_bench allocates its buffer after any reset the caller makes, which
    is why it is not used here); `peak` counts the buffer unless flush_l2=False.
    """
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return percentiles(samples), None
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if flush_l2 else None
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    at_start = torch.cuda.memory_allocated(device)
    for start, end in events:
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    memory = CudaMemory(at_start, torch.cuda.max_memory_allocated(device))
    del flush
    return percentiles([s.elapsed_time(e) / 1e3 for s, e in events]), memory


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """A file-name part for the device: "cpu", "h200", "h100-80gb-hbm3", ..."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower().replace("nvidia", "")
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def versions() -> str:
    parts = [f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return "; ".join(parts)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass(frozen=True)
class Row:
    op: str
    impl: str
    shape: str
    metric: str
    unit: str
    p50: float
    p20: float
    p80: float
    device: str
    versions: str
    commit: str
    date: str


def make_row(
    op: str,
    impl: str,
    shape: str,
    metric: str,
    unit: str,
    value: Timing | float,
    device: torch.device,
) -> Row:
    """A result row stamped with device, versions, commit and today's date."""
    t = value if isinstance(value, Timing) else Timing(value, value, value)
    return Row(
        op,
        impl,
        shape,
        metric,
        unit,
        t.p50,
        t.p20,
        t.p80,
        device_name(device),
        versions(),
        git_commit(),
        dt.date.today().isoformat(),
    )


def append_rows(path: Path, rows: list[Row]) -> None:
    """Append `rows` to the CSV at `path`, writing the header if the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
