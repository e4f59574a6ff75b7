"""Prototype cross-entropy that never holds an [N, K] tensor; see kernels/reference.py for the math.

Implementations behind `impl`: "reference" (materialised, the truth), "chunked" (PyTorch loop over
K blocks, any device) and "triton" (fused GPU kernels); "auto" picks triton on CUDA, else chunked.
Each loss returns a LossResult (kernels/result.py).
"""

from fastproto.kernels.aligned import aligned_cross_entropy
from fastproto.kernels.dispatch import (
    prototype_cross_entropy,
    teacher_responsibilities,
    teacher_statistics,
)
from fastproto.kernels.result import ESTEPS, LossResult, Responsibilities

__all__ = [
    "ESTEPS",
    "LossResult",
    "Responsibilities",
    "aligned_cross_entropy",
    "prototype_cross_entropy",
    "teacher_responsibilities",
    "teacher_statistics",
]
