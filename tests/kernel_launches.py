"""Counting Triton kernel launches in a test: the pass counts of bench/results/kernel_passes.md."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest


class Launches:
    """Stands in for a triton kernel: counts launches and records their HAS_ constexpr flags
    (`calls`)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid: tuple) -> Any:
        def launch(*args: Any, **kwargs: Any) -> Any:
            self.calls.append({k: v for k, v in kwargs.items() if k.startswith("HAS_")})
            return self.kernel[grid](*args, **kwargs)

        return launch


def count_launches(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> Launches:
    """Replace module.name (a kernel the module launches by that name) by a counting stand-in."""
    counter = Launches(getattr(module, name))
    monkeypatch.setattr(module, name, counter)
    return counter
