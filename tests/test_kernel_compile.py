"""Every compiled kernel configuration fits an A100 and an H100/H200, checked on the CPU.

The interpreter tier never compiles the kernels, so a configuration that needs more shared memory
than a GPU has, or that spills registers heavily, would only show on a lent GPU. Here
tools/kernel_compile.py compiles every configuration the dispatcher can choose ahead of time for
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
SCRIPT = ROOT / "tools" / "kernel_compile.py"
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
        [
            sys.executable,
            str(SCRIPT),
            "--cache",
            str(_cache_file(request, tmp_path)),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1200,
    )
    print(out.stdout)  # the table: registers, spills and shared memory per configuration
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    summary = out.stdout.strip().splitlines()[-1]  # "N configurations, C compiled now, ..."
    assert int(summary.split()[0]) >= 100 and summary.endswith(" 0 over a limit"), summary


# Lines of the TTGIR triton 3.8 makes from two dispatched configurations, shortened:
# _row_lse_kernel for sm_90 (bf16, BLOCK_D = 256, 64 x 64 blocks, 8 warps) and
# _student_grad_kernel HAS_DY for sm_80 (fp16, BLOCK_D = 1024, 16 x 16 blocks, 8 warps)
ROW_LSE_TTGIR = "\n".join(
    [
        "#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], "
        "instrShape = [16, 32, 16]}>",
        "%acc_72 = ttng.warp_group_dot %y_35, %acc, %cst_0 "
        "{inputPrecision = 0 : i32, isAsync = true} "
        ": !ttg.memdesc<64x256xbf16> * !ttg.memdesc<256x64xbf16> "
        "-> tensor<64x64xf32, #mma> loc(#l)",
    ]
)
GRAD_LAYOUT = (
    "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [1, 8], "
    "instrShape = [16, 8]}>"
)
GRAD_LOGITS = (
    "%acc_114 = tt.dot %y_113, %acc_110, %cst_0, inputPrecision = tf32 : tensor<16x1024xf16> * "
    "tensor<1024x16xf16> -> tensor<16x16xf32, #mma> loc(#l)"
)
GRAD_DY = (
    "%out_123 = tt.dot %out_121, %w_122, %arg13, inputPrecision = tf32 : tensor<16x16xf16> * "
    "tensor<16x1024xf16> -> tensor<16x1024xf32, #mma> loc(#l)"
)


def test_mma_figures_read_the_replication_of_each_dot() -> None:
    """[4, 2] warps of 32-column wgmma on a 64 x 64 tile cover it once: 1x. [1, 8] warps of 8
    columns on a 16 x 16 tile cover 64 columns: 4x; the 16 x 1024 dot under the same layout: 1x."""
    sys.path.insert(0, str(ROOT / "tools"))
    from mma_layouts import mma_figures

    assert mma_figures(ROW_LSE_TTGIR) == {"mma": "v3", "redundancy": 1}
    grad = [GRAD_LAYOUT, GRAD_LOGITS, GRAD_DY]
    assert mma_figures("\n".join(grad)) == {"mma": "v2", "redundancy": 4}
    assert mma_figures("\n".join(grad[::2])) == {"mma": "v2", "redundancy": 1}
    assert mma_figures("no dot here") == {"mma": "-", "redundancy": 1}
