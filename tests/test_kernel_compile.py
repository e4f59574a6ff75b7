"""Every compiled kernel configuration fits an A100 and an H100/H200, checked on the CPU.

The interpreter tier never compiles the kernels, so a configuration that needs more shared memory
than a GPU has, or that spills registers heavily, would only show on a lent GPU. Here
bench/kernel_compile.py compiles every configuration the dispatcher can choose ahead of time for
sm_80 and sm_90 (triton.compile with a GPUTarget and triton's own ptxas) and fails on one over
a limit. Its figures are cached by a key of the triton version, the kernel source and the
configuration: the committed bench/results/kernel_compile_table.json seeds the cache, so only
what changed since is compiled (about 0.8 s per configuration on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "kernel_compile.py"
COMMITTED = ROOT / "bench" / "results" / "kernel_compile_table.json"


def _cache_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A writable cache, seeded from the committed figures: pytest's cache folder when it is on."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("kernel-compile") if cache is not None else tmp_path
    path = Path(folder) / "figures.json"
    if not path.exists() and COMMITTED.exists():
        shutil.copyfile(COMMITTED, path)
    return path


def test_every_dispatch_configuration_compiles_within_limits(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pytest.importorskip("triton.backends.nvidia")  # ptxas comes with triton's nvidia backend
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cache", str(_cache_file(request, tmp_path)),
         "--jobs", "2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200,
    )  # fmt: skip
    print(out.stdout)  # the table: registers, spills and shared memory per configuration
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    summary = out.stdout.strip().splitlines()[-1]  # "N configurations, C compiled now, ..."
    assert int(summary.split()[0]) >= 100 and summary.endswith(" 0 over a limit"), summary
