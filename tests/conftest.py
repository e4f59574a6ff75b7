"""Test set-up shared by every tier.

The CPU tier runs Triton kernels through the interpreter: TRITON_INTERPRET must be set before
`triton` is first imported, so it is set here, at collection time. The GPU tier
(`FASTPROTO_TEST_TIER=gpu pytest -m gpu`) compiles the kernels for real.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

if os.environ.get("FASTPROTO_TEST_TIER") != "gpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


# numba's finaliser of a freed FFCV decoder can raise (printed as "Exception ignored ...
# KeyError"). If it runs while CPython 3.11 builds an AST (an import compiled from source,
# pytest's assertion rewriting), that becomes "SystemError: AST constructor recursion depth
# mismatch" and ends the session. So after every test that built an FFCV loader, garbage is
# collected at once, where nothing is being parsed (after every test it would double the
# suite's time).
FFCV_LOADERS_BUILT = [0]


@pytest.fixture(scope="session", autouse=True)
def _count_ffcv_loaders() -> Iterator[None]:
    from fastproto.data import ffcv_loader

    original = ffcv_loader.FFCVLoader.__init__

    def counting_init(self: ffcv_loader.FFCVLoader, *args: Any, **kwargs: Any) -> None:
        FFCV_LOADERS_BUILT[0] += 1
        original(self, *args, **kwargs)

    ffcv_loader.FFCVLoader.__init__ = counting_init  # type: ignore[method-assign]
    yield
    ffcv_loader.FFCVLoader.__init__ = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _collect_after_ffcv_tests() -> Iterator[None]:
    before = FFCV_LOADERS_BUILT[0]
    yield
    if FFCV_LOADERS_BUILT[0] != before:
        gc.collect()
