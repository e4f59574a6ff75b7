"""Test set-up shared by every tier.

The CPU tier runs Triton kernels through the interpreter: TRITON_INTERPRET must be set before
`triton` is first imported, so it is set here, at collection time. The GPU tier
(`FASTPROTO_TEST_TIER=gpu pytest -m gpu`) compiles the kernels for real.
"""

from __future__ import annotations

import os

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
