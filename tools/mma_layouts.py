"""Which matrix instructions a compiled Triton kernel's dots use, and how redundantly.

Read from the kernel's TTGIR (`compiled.asm["ttgir"]`): each `#mma` layout alias names its
version (2: mma.sync, 3: Hopper's warpgroup wgmma), warps along (M, N) and instruction tile; each
dot names its output shape and layout. Triton replicates a dot whose output tile is smaller than
its warps cover, so every replica is computed again: a 16 x 16 logit tile under 8 warps laid out
[1, 8] with 8-column instructions covers 16 x 64, four times the tile.
"""

from __future__ import annotations

import re

MMA_LAYOUT = re.compile(
    r"^(#mma\d*) = #ttg\.nvidia_mma<\{versionMajor = (\d+), versionMinor = \d+, "
    r"warpsPerCTA = \[(\d+), (\d+)\], instrShape = \[(\d+), (\d+)",
    re.M,
)
DOT_OUTPUT = re.compile(r"(?:tt\.dot|ttng\.warp_group_dot) .*-> tensor<(\d+)x(\d+)xf32, (#mma\d*)>")


def mma_figures(ttgir: str) -> dict[str, object]:
    """{"mma": the MMA versions used, e.g. "v3" or "v2", "redundancy": the largest factor by
    which a dot's tile is recomputed across warps (1 = none)} from a kernel's TTGIR."""
    layouts = {m[0]: tuple(int(x) for x in m[1:]) for m in MMA_LAYOUT.findall(ttgir)}
    versions, worst = set(), 1
    for rows, cols, alias in DOT_OUTPUT.findall(ttgir):
        version, warps_m, warps_n, _, instr_n = layouts[alias]
        versions.add(version)
        covered_m, covered_n = warps_m * 16, warps_n * instr_n  # 16 rows per warp in v2 and v3
        worst = max(worst, max(1, covered_m // int(rows)) * max(1, covered_n // int(cols)))
    return {"mma": "+".join(f"v{v}" for v in sorted(versions)) or "-", "redundancy": worst}
