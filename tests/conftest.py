"""Test set-up shared by every tier.

The CPU tier runs Triton kernels through the interpreter: TRITON_INTERPRET must be set before
the kernels are decorated (when fastproto.kernels.triton_kernels is first imported, during
collection), so it is set here. The GPU tier (`make test-gpu`, or
`FASTPROTO_TEST_TIER=gpu pytest -m gpu tests`) compiles the kernels for real; a plain
`pytest -m gpu` on a machine with CUDA is taken as the GPU tier too. Collecting the GPU tier
needs only torch, triton, timm and numpy: modules that use scipy, FFCV or DALI import them
inside the tests that need them (tests/test_gpu_tier.py checks this).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

GPU_TIER = os.environ.get("FASTPROTO_TEST_TIER") == "gpu"
INTERPRET_SET_HERE = not GPU_TIER and "TRITON_INTERPRET" not in os.environ
if INTERPRET_SET_HERE:
    os.environ["TRITON_INTERPRET"] = "1"
elif GPU_TIER:
    os.environ.pop("TRITON_INTERPRET", None)  # the GPU tier is compiled, whatever the shell set

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """`pytest -m gpu` where CUDA is visible runs the kernels compiled, not interpreted."""
    if INTERPRET_SET_HERE and config.getoption("markexpr") == "gpu" and torch.cuda.is_available():
        del os.environ["TRITON_INTERPRET"]


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
