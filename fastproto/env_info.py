"""`fastproto env`: the versions a bug report needs; the GPU is not touched at import."""

from __future__ import annotations

import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # a broken optional install must not hide the others
        return f"not available ({type(exc).__name__}: {exc})".splitlines()[0][:120]
    return str(getattr(mod, "__version__", "installed"))


def _accelerator() -> list[tuple[str, str]]:
    import torch

    rows = [("torch CUDA build", str(torch.version.cuda))]
    if not torch.cuda.is_available():
        return [*rows, ("GPU", "none visible")]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        rows.append((f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    return rows


def environment_report() -> list[tuple[str, str]]:
    """Return (name, value) rows: platform, python and the versions fastproto depends on."""
    rows = [
        ("platform", platform.platform()),
        ("python", sys.version.split()[0]),
        ("fastproto", _version("fastproto")),
    ]
    for name, module in [
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("triton", "triton"),
        ("timm", "timm"),
        ("numpy", "numpy"),
        ("ffcv", "ffcv"),
        ("DALI", "nvidia.dali"),
    ]:
        rows.append((name, _version(module)))
    return rows + _accelerator()


def print_environment() -> None:
    rows = environment_report()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
