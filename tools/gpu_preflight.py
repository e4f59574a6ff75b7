"""Is this machine ready for the GPU tier and the GPU benchmarks? Checks, prints, exits 0 or 1.

Run with the interpreter that will run the tests (a lent GPU machine's own python3, with its
preinstalled torch, triton and timm; the machine is offline, so nothing is installed from a
registry). Checked: Python >= 3.11, torch with a visible CUDA device, triton, timm, numpy and
pytest. Noted, not required: whether `pip install --no-build-isolation --no-deps -e .` can build
offline (setuptools >= 70.1, or >= 68 with the `wheel` package); where it cannot,
bench/gpu_suite.sh and `make test-gpu` run from tools/source_site.py's link tree instead.

    python3 tools/gpu_preflight.py
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

MIN_PYTHON = (3, 11)
MIN_SETUPTOOLS = (68,)
WHEEL_BUILTIN_SETUPTOOLS = (70, 1)  # from here on setuptools builds wheels without `wheel`
BENCH = Path(__file__).resolve().parent.parent / "bench"  # harness.py: the device slug


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def problems() -> list[str]:
    """What stops the GPU tier here, each as a sentence that says what to do; [] when ready."""
    found = []
    if sys.version_info < MIN_PYTHON:
        found.append(f"Python {sys.version.split()[0]} is older than 3.11: use a newer python3")
    for name in ("torch", "triton", "timm", "numpy", "pytest"):
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            found.append(f"cannot import {name} ({err}): use the python3 that has PyTorch")
            continue
        print(f"{name} {getattr(module, '__version__', '?')}")
    note = editable_install_note()
    if note is not None:
        print(f"note: {note}; the GPU suite and make test-gpu use tools/source_site.py instead")
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if not torch.cuda.is_available():
            found.append("torch sees no CUDA device: run this on the GPU machine")
        else:
            sys.path.insert(0, str(BENCH))
            from harness import device_slug

            props = torch.cuda.get_device_properties(0)
            print(
                f"GPU {props.name}, sm_{props.major}{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
            )
            print(f"device slug: {device_slug(torch.device('cuda'))}")  # names the result CSVs
    return found


def editable_install_note() -> str | None:
    """Why an offline `pip install --no-build-isolation -e .` would fail here, or None."""
    try:
        setuptools = importlib.import_module("setuptools")
    except ImportError:
        return "no setuptools: the editable install cannot build"
    version = _version_tuple(setuptools.__version__)
    print(f"setuptools {setuptools.__version__}")
    if version < MIN_SETUPTOOLS:
        return f"setuptools {setuptools.__version__} is older than 68: no editable install"
    if version >= WHEEL_BUILTIN_SETUPTOOLS or importlib.util.find_spec("wheel") is not None:
        return None
    return f"setuptools {setuptools.__version__} builds only with the `wheel` package, missing here"


def main() -> int:
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    found = problems()
    for line in found:
        print(f"NOT READY: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
