"""Prototype cross-entropy that never holds an [N, K] tensor; see kernels/reference.py for the math.

Implementations behind `impl`: "reference" (materialised, the truth), "chunked" (PyTorch loop over
K blocks, any device) and "triton" (fused GPU kernels); "auto" picks triton on CUDA, else chunked.
"""

from fastproto.kernels.aligned import aligned_cross_entropy, aligned_cross_entropy_with_raw_means
from fastproto.kernels.dispatch import (
    prototype_cross_entropy,
    prototype_cross_entropy_with_raw_means,
    teacher_statistics,
)

__all__ = [
    "aligned_cross_entropy",
    "aligned_cross_entropy_with_raw_means",
    "prototype_cross_entropy",
    "prototype_cross_entropy_with_raw_means",
    "teacher_statistics",
]
