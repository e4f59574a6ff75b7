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
    "op", "impl", "shape", "metric", "unit", "p50", "p20", "p80",
    "device", "versions", "commit", "date",
)  # fmt: skip


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


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Seconds per call of `fn`; on CUDA uses triton's do_bench (ms -> s)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        ms = do_bench(fn, warmup=25 * warmup, rep=100 * repeats, quantiles=[0.5, 0.2, 0.8])
        return Timing(ms[0] / 1e3, ms[1] / 1e3, ms[2] / 1e3)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
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


def make_row(op: str, impl: str, shape: str, metric: str, unit: str, value: Timing | float,
             device: torch.device) -> Row:  # fmt: skip
    """A result row stamped with device, versions, commit and today's date."""
    t = value if isinstance(value, Timing) else Timing(value, value, value)
    return Row(op, impl, shape, metric, unit, t.p50, t.p20, t.p80, device_name(device), versions(),
               git_commit(), dt.date.today().isoformat())  # fmt: skip


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
