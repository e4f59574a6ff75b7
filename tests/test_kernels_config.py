"""Launch configuration of the compiled Triton path, checked without a GPU.

The interpreter tier never sees the compiled block sizes, so their arithmetic is checked here:
K splits cover K exactly with no empty split, and one program's tiles fit in shared memory.
"""

from __future__ import annotations

import pytest
import torch
from fastproto.kernels import triton_loss

SHARED_MEMORY = 228 * 1024  # bytes per SM on H100 and H200


def compiled_config(monkeypatch: pytest.MonkeyPatch, dim: int, dtype: torch.dtype) -> dict:
    monkeypatch.setattr(triton_loss, "_interpreting", lambda: False)
    return triton_loss._config(dim, dtype)


@pytest.mark.parametrize("n_rows", [1, 17, 768, 25088])
@pytest.mark.parametrize("k", [1, 31, 64, 1000, 65536, 1048577])
def test_splits_cover_k_without_empty_split(n_rows: int, k: int) -> None:
    cfg = {"BLOCK_N": 64, "BLOCK_K": 64}
    n_splits, per_split = triton_loss._splits(n_rows, k, cfg)
    assert per_split % cfg["BLOCK_K"] == 0
    assert n_splits * per_split >= k  # every prototype is in a split
    assert (n_splits - 1) * per_split < k  # the last split is not empty


@pytest.mark.parametrize("dim", [16, 100, 256, 512, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compiled_tiles_fit_shared_memory(
    monkeypatch: pytest.MonkeyPatch, dim: int, dtype: torch.dtype
) -> None:
    cfg = compiled_config(monkeypatch, dim, dtype)
    size = torch.finfo(dtype).bits // 8
    block = max(cfg["BLOCK_N"], cfg["BLOCK_K"])
    # a resident row tile, then two streamed operand tiles per stage (logit protos and mix)
    tiles = block * cfg["BLOCK_D"] * size * (1 + 2 * cfg["num_stages"])
    assert tiles <= SHARED_MEMORY, cfg
    assert cfg["BLOCK_D"] >= dim and cfg["BLOCK_N"] >= 16 and cfg["BLOCK_K"] >= 16
    assert cfg["IEEE"] == (dtype == torch.float32)
    assert not cfg["CAST_FP32"]


@pytest.mark.parametrize("dim", [16, 100, 256, 512, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_config_fuses_up_to_block_d_512(
    monkeypatch: pytest.MonkeyPatch, dim: int, dtype: torch.dtype
) -> None:
    """The fused backward shrinks only BLOCK_N and BLOCK_K, never below 16, and makes dY and dW
    in one launch for every BLOCK_D up to 512; in half precision at BLOCK_D = 256 and 512 the
    16-row blocks take 32 prototypes with WIDE's warps (a 16 x 16 logit tile under 8 warps is
    computed 4x over)."""
    fwd = compiled_config(monkeypatch, dim, dtype)
    cfg = triton_loss.backward_config(fwd)
    same = ("BLOCK_D", "IEEE", "CAST_FP32", "num_stages")
    assert {k: cfg[k] for k in same} == {k: fwd[k] for k in same}
    wide = dtype != torch.float32 and cfg["BLOCK_D"] in (256, 512)
    assert cfg["num_warps"] == ({256: 4, 512: 8}[cfg["BLOCK_D"]] if wide else fwd["num_warps"])
    assert cfg["BLOCK_N"] <= fwd["BLOCK_N"] and cfg["BLOCK_K"] <= max(fwd["BLOCK_K"], 32)
    for key in ("BLOCK_N", "BLOCK_K"):
        assert cfg[key] >= 16
        assert cfg[key] == (32 if wide and key == "BLOCK_K" else 16) or (
            cfg[key] * cfg["BLOCK_D"] <= triton_loss.BACKWARD_TILE_ELEMENTS
        )
    assert triton_loss.fuses_backward(cfg) == (fwd["BLOCK_D"] <= 512)


def test_chunked_tiles_are_larger_on_a_gpu() -> None:
    """The chunked path's tile budget: 2^21 elements on the CPU (its measured sweet spot), 2^25
    on CUDA, where a small tile is shorter than a kernel launch. At iBOT's 7526 patch rows and
    K = 262144 that is ~60 tiles on a GPU instead of ~940, and neither holds more than its
    budget once a block is over MIN_BLOCK."""
    from fastproto.kernels import chunked

    rows, k = 7526, 262144
    cpu, gpu = chunked.default_block(rows), chunked.default_block(rows, torch.device("cuda"))
    assert cpu == chunked.default_block(rows, torch.device("cpu"))
    assert -(-k // cpu) > 900 and -(-k // gpu) <= 64
    assert rows * cpu <= chunked.TILE_ELEMENTS and rows * gpu <= chunked.CUDA_TILE_ELEMENTS
    assert chunked.default_block(10**9, torch.device("cuda")) == chunked.MIN_BLOCK


@pytest.mark.parametrize("dim", [16, 33, 64, 128, 256, 512, 1024])
def test_aligned_sweep_runs_half_precision_up_to_block_d_512(
    monkeypatch: pytest.MonkeyPatch, dim: int
) -> None:
    """The aligned sweep takes compiled half-precision inputs up to BLOCK_D = 512 with blocks
    under its tile bound; compiled float32 and BLOCK_D = 1024 go to the general kernels."""
    from fastproto.kernels.triton_aligned import aligned_config
    from fastproto.kernels.triton_loss import MIX_TILE_LIMIT

    assert aligned_config(compiled_config(monkeypatch, dim, torch.float32)) is None
    cfg = aligned_config(compiled_config(monkeypatch, dim, torch.bfloat16))
    if dim > 512:
        assert cfg is None
        return
    assert cfg is not None and cfg["BLOCK_K"] == (32 if dim > 128 else cfg["BLOCK_N"])
    assert (
        cfg["BLOCK_N"] == 16
        or cfg["BLOCK_N"] * (cfg["BLOCK_N"] + cfg["BLOCK_D"]) <= (MIX_TILE_LIMIT["half"])
    )
