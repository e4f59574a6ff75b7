"""The prototype side of a training step grows by at most 8 MB per 1024 prototypes (D = 256).

bench/train_memory_point.py runs the trainer's own step with the ViT's transformer blocks
removed (patch embedding, the Table 6 head, DINO + iBOT loss, KoLeo-proto, clipping, AdamW,
EMA), at B = 2, in a fresh process per K, and reports the peak growth of the step's anonymous
RSS over the state after build_state (the total RSS also counts library pages, which memory
pressure from other processes evicts and the step faults back in: hundreds of MB of noise). At
D = 256 in float32 one [K, D] tensor is 1 MB per 1024 prototypes; what must grow is the
gradient and AdamW's two moments (3 MB per 1024). Measured, K = 8192 against 65536: 5.5 MB per
1024 (6.0 and 6.5 against K = 40960, on 2 threads and 1); with KoLeo-proto's former autograd
backward, which held about four [K, D] copies of the grouped prototypes from the forward on,
11.8, and this test failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POINT = ROOT / "bench" / "train_memory_point.py"
KS = (8192, 65536)
BOUND_MB_PER_1024 = 8.0
FLOOR_MB_PER_1024 = 3.0  # gradient + two AdamW moments: below this the measurement is broken


def _growth_mb(k: int) -> float:
    cmd = [sys.executable, str(POINT), "--batch", "2", "--impl", "head", "--k", str(k)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result
    return float(result["anon_growth_mb"])


def test_prototype_side_memory_per_1024_prototypes_stays_under_the_bound() -> None:
    low, high = (_growth_mb(k) for k in KS)
    slope = (high - low) / (KS[1] - KS[0]) * 1024
    assert FLOOR_MB_PER_1024 <= slope <= BOUND_MB_PER_1024, (
        f"the prototype side of a step grows by {slope:.1f} MB per 1024 prototypes "
        f"({low:.0f} MB at K = {KS[0]}, {high:.0f} MB at K = {KS[1]}); the bound is "
        f"{BOUND_MB_PER_1024} and the gradient and AdamW moments alone take "
        f"{FLOOR_MB_PER_1024}: look for a new [K, D] tensor that lives across the step"
    )
