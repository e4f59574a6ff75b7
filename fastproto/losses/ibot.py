"""iBOT's masked-image-modelling loss on the patch prototypes, on the masked tokens only.

The masked tokens of all G*B global-crop images are gathered into one buffer (as DINOv2 does):
student_patches [Nm, D] and teacher_patches [Nm, D], row n of each at the same position of the
same crop, and image_index [Nm] giving that crop's image in 0 .. num_images - 1. With the centred,
sharpened teacher P_t and the student P_s:

    loss_j = 1 / max(n_j, 1) * sum_{n : image_index[n] = j} H(P_t(t_n), P_s(s_n))
    loss   = 1 / num_images * sum_j loss_j

so each image's loss is the mean over its n_j masked tokens and images without a masked token
count as zero (iBOT divides each image's masked sum by max(count, 1), then averages over images
and over the global crops, which is the mean over all num_images = G*B images). As a pairing
table: P = 1, student row n against teacher row n with weight 1 / (n_j * num_images), which
`aligned_cross_entropy` takes as such (one fused sweep on the triton impl).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastproto.kernels import LossResult, aligned_cross_entropy
from fastproto.value_checks import check_values


def _check_patches(
    student_patches: Tensor, teacher_patches: Tensor, image_index: Tensor, num_images: int
) -> None:
    if student_patches.dim() != 2 or student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"student_patches {tuple(student_patches.shape)} and teacher_patches "
            f"{tuple(teacher_patches.shape)} must both be [Nm, D], row n the same masked token"
        )
    if image_index.shape != (student_patches.shape[0],) or image_index.dtype != torch.int64:
        raise ValueError(
            f"image_index must be int64 [Nm]=[{student_patches.shape[0]}], got "
            f"{image_index.dtype} {tuple(image_index.shape)}"
        )
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not image_index.numel() or not check_values(image_index):  # min/max: a device sync
        return
    if int(image_index.min()) < 0 or int(image_index.max()) >= num_images:
        raise ValueError(
            f"image_index must lie in [0, num_images-1]=[0, {num_images - 1}], found "
            f"[{int(image_index.min())}, {int(image_index.max())}]"
        )


def ibot_patch_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    image_index: Tensor,
    num_images: int,
    student_protos: Tensor,
    teacher_protos: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
    vmf: bool,
    impl: str = "auto",
    *,
    raw_means: bool = False,
) -> LossResult:
    """iBOT patch loss -> LossResult: the loss, mean_probs [K], the mean of the centred teacher
    softmax over the Nm masked tokens, and with raw_means=True raw_means [K], the same mean of
    the uncentred softmax (probability centring's statistic, on triton made by the loss's own
    sweeps).

    With no masked token at all (Nm = 0) the loss is 0, still attached to the student and its
    prototypes so every parameter takes part in backward, mean_probs is uniform 1/K, which
    leaves probability centring unchanged up to a constant, and raw_means is zeros, which
    ProbabilityCentering.after_loss leaves out (it folds in no rows).
    """
    _check_patches(student_patches, teacher_patches, image_index, num_images)
    if student_patches.shape[0] == 0:
        return _no_masked_token(student_patches, student_protos, teacher_protos, raw_means)
    per_token = _token_weights(image_index, num_images, student_patches.dtype)  # [Nm]
    return aligned_cross_entropy(
        student_patches,
        teacher_patches,
        student_protos,
        teacher_protos,
        per_token,
        center,
        student_temp,
        teacher_temp,
        vmf,
        impl,
        raw_means=raw_means,
    )


def _no_masked_token(
    student_patches: Tensor, student_protos: Tensor, teacher_protos: Tensor, raw_means: bool
) -> LossResult:
    """The result for Nm = 0: see ibot_patch_loss."""
    k = teacher_protos.shape[0]
    loss = (student_patches.sum() + student_protos.sum()) * 0.0
    mean_probs = teacher_protos.new_full((k,), 1.0 / k).detach()
    raw = teacher_protos.new_zeros(k).detach() if raw_means else None
    return LossResult(loss, mean_probs, raw)


def _token_weights(image_index: Tensor, num_images: int, dtype: torch.dtype) -> Tensor:
    """1 / (n_j * num_images) for each masked token of image j [Nm], in at least float32:
    bf16 patch embeddings (autocast) would round each 1/count."""
    # masked tokens per image [num_images]; bincount would size its output from max(index), a
    # device-to-host sync every step on a GPU
    ones = torch.ones_like(image_index)
    counts = torch.zeros(num_images, dtype=ones.dtype, device=ones.device).index_add_(
        0, image_index, ones
    )
    weight_dtype = torch.promote_types(dtype, torch.float32)
    return 1.0 / (counts[image_index].to(weight_dtype) * num_images)
