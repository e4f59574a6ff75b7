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


def test_the_ab_variants_blocks_are_in_the_check() -> None:
    """The blocks that bench/prototype_loss.py's A/B variants set are compiled and checked too
    (a variant launched on a GPU with blocks over a limit would fail there, not here)."""
    pytest.importorskip("triton.backends.nvidia")
    code = (
        "import kernel_compile as kc, prototype_loss as pl\n"
        "got = {(j.kernel, dict(j.constexprs)['BLOCK_D'], (dict(j.constexprs)['BLOCK_N'], "
        "dict(j.constexprs)['BLOCK_K'], j.num_warps)) for j in kc.jobs() if j.ab"
        " and j.arch == 90 and j.dtype == 'bf16'}\n"
        "want = {(k, d, b) for _, s in pl.VARIANTS.values() for k, by_d in"
        " s.get('BLOCK_OVERRIDES', {}).items() for d, b in by_d.items()}\n"
        "print(len(want), sorted(want - got))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT / "bench", timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # triton-tall's two kernels, triton-coldw's two column sweeps (its row sweeps are tall's),
    # triton-flash's row sweep (its column sweep is coldw's)
    assert out.stdout.split() == ["5", "[]"], out.stdout


# Lines of the TTGIR triton 3.8 made for sm_90 from the former _row_mix_kernel (bf16,
# BLOCK_D = 256, 64 rows, 8 warps) and _aligned_grad_kernel (bf16, BLOCK_D = 256, 16 rows, 8
# warps, before backward_config's WIDE), shortened
ROW_MIX_TTGIR = "\n".join([
    "#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], "
    "instrShape = [16, 32, 16]}>",
    "#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], "
    "instrShape = [16, 128, 16]}>",
    "%acc_105 = ttng.warp_group_dot %y_41, %acc_101, %cst_1 {isAsync = true} : "
    "!ttg.memdesc<64x256xbf16> * !ttg.memdesc<256x64xbf16> -> tensor<64x64xf32, #mma> loc(#l)",
    "%out_125 = ttng.warp_group_dot %out_124, %w_120, %arg14 {isAsync = true} : "
    "tensor<64x64xbf16> * !ttg.memdesc<64x256xbf16> -> tensor<64x256xf32, #mma1> loc(#l)",
])  # fmt: skip
ALIGNED_LAYOUT = (
    "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [1, 8], "
    "instrShape = [16, 8]}>"
)
ALIGNED_LOGITS = (
    "%acc_129 = tt.dot %y_128, %acc_124, %cst_4, inputPrecision = tf32 : tensor<16x256xbf16> * "
    "tensor<256x16xbf16> -> tensor<16x16xf32, #mma> loc(#l)"
)
ALIGNED_DY = (
    "%out_164 = tt.dot %out_162, %w_163, %arg24, inputPrecision = tf32 : tensor<16x16xbf16> * "
    "tensor<16x256xbf16> -> tensor<16x256xf32, #mma> loc(#l)"
)


def test_mma_figures_read_the_replication_of_each_dot() -> None:
    """[8, 1] warps on a 64-row wgmma tile cover 128 rows: 2x. [1, 8] warps of 8 columns on a
    16 x 16 tile cover 64 columns: 4x; the 16 x 256 dot under the same layout: 1x."""
    sys.path.insert(0, str(ROOT / "bench"))
    from mma_layouts import mma_figures

    assert mma_figures(ROW_MIX_TTGIR) == {"mma": "v3", "redundancy": 2}
    aligned = [ALIGNED_LAYOUT, ALIGNED_LOGITS, ALIGNED_DY]
    assert mma_figures("\n".join(aligned)) == {"mma": "v2", "redundancy": 4}
    assert mma_figures("\n".join(aligned[::2])) == {"mma": "v2", "redundancy": 1}
    assert mma_figures("no dot here") == {"mma": "-", "redundancy": 1}
