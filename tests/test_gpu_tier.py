"""The GPU tier collects on a machine that has only torch, triton, timm and numpy.

A lent GPU machine is offline and has its own preinstalled packages; scipy, FFCV, DALI, numba,
OpenCV and matplotlib may be missing there. `pytest -m gpu` still imports every test module, so
a module-level import of one of them would stop collection before any GPU test ran. Here a
child process makes those imports fail (a meta-path hook), collects the GPU tier as
`make test-gpu` does, and also imports what the session fixtures of tests/conftest.py import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CHILD = r"""
import importlib.abc, sys

BLOCKED = ("scipy", "ffcv", "nvidia.dali", "numba", "cv2", "matplotlib")


def blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Block())
try:
    import scipy.special  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("the import hook did not block scipy")
import pytest

rc = pytest.main(["--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", sys.argv[1]])
import fastproto.data.ffcv_loader  # noqa: F401  (what conftest's session fixture imports)
leaked = sorted(name for name in sys.modules if blocked(name))
print("imported blocked modules:", leaked)
sys.exit(rc if not leaked else 3)
"""


def test_gpu_tier_collects_without_scipy_ffcv_or_dali() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["FASTPROTO_TEST_TIER"] = "gpu"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(TESTS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS.parent,
        timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "imported blocked modules: []" in log
    collected = [line for line in log.splitlines() if "tests collected" in line]
    assert collected, log[-4000:]
    count = int(collected[-1].split("/")[0])
    assert count >= 10, collected[-1]  # test_kernels' and test_vmf's gpu tests at least
