"""Which prototypes the data uses: M counts distinct directions, not chosen ones.

A prototype can be unique (paper 1, definition 4.1) and still be the teacher's choice for no
image, e.g. one that a regulariser keeps apart from the others where no data lies. On a fixed
sample of training images (the first USAGE_IMAGES of the train split, whole images as the
evaluation reads them), with b [N, K] the teacher's centred, tempered logits
(kernels.reference.teacher_logits, the centre as the run's centring holds it now):

    used_prototypes      = #{k : k = argmax_j b[n, j] for at least one n}
    effective_prototypes = exp(H(mean_n softmax(b[n])))    (K when every prototype takes an
                                                            equal share of the sample)
"""

from __future__ import annotations

import torch

from fastproto.config import TrainConfig
from fastproto.kernels.reference import teacher_logits
from fastproto.models import SSLNetwork, head_is_vmf, head_prototypes

USAGE_IMAGES = 2048  # enough for K = 1024 to be fully used; a fixed cost at any data set size
TILE_ELEMENTS = 2**22  # float64 logit tile [rows, K]: 32 MiB, whatever K is


@torch.no_grad()
def assignment_usage(
    teacher_y: torch.Tensor,
    protos: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    vmf: bool,
    chunk: int | None = None,
) -> dict[str, float]:
    """teacher_y [N, D] (head outputs), protos [K, D], center [K] -> used and effective
    prototypes; logits are made `chunk` rows at a time ([chunk, K], never [N, K]; by default
    as many rows as keep a tile at TILE_ELEMENTS)."""
    if teacher_y.dim() != 2 or teacher_y.shape[0] < 1:
        raise ValueError(f"teacher_y must be [N, D] with N >= 1, got {tuple(teacher_y.shape)}")
    k = protos.shape[0]
    chunk = chunk or max(1, TILE_ELEMENTS // k)
    chosen = torch.zeros(k, dtype=torch.bool, device=protos.device)
    mass = torch.zeros(k, dtype=torch.float64, device=protos.device)
    for start in range(0, teacher_y.shape[0], chunk):
        y = teacher_y[start : start + chunk].to(protos)
        b = teacher_logits(y, protos, center.to(protos), teacher_temp, vmf).double()  # [c, K]
        chosen[b.argmax(dim=1)] = True
        mass += torch.softmax(b, dim=1).sum(dim=0)
    mean = mass / teacher_y.shape[0]  # [K], the mean assignment
    entropy = -(mean * torch.log(mean.clamp_min(1e-300))).sum()
    return {"used_prototypes": int(chosen.sum()), "effective_prototypes": float(entropy.exp())}


@torch.no_grad()
def sample_head_outputs(
    network: SSLNetwork, config: TrainConfig, device: torch.device, images: int = USAGE_IMAGES
) -> torch.Tensor:
    """The CLS head's outputs [min(images, N), D] for the first `images` training images."""
    from fastproto.train.features import EvalImages

    rows: list[torch.Tensor] = []
    seen = 0
    for x, _ in EvalImages(config, config.data.path, "train", device):
        rows.append(network.cls_head(network.backbone(x)[0]).float())
        seen += x.shape[0]
        if seen >= images:
            break
    return torch.cat(rows)[:images]


def prototype_usage(
    network: SSLNetwork,
    centring: torch.nn.Module,
    config: TrainConfig,
    teacher_temp: float,
    device: torch.device,
) -> dict[str, float]:
    """Used and effective prototypes of `network`'s CLS head (the teacher) on the sample."""
    head = network.cls_head
    protos = head_prototypes(head).detach().float()
    center = centring.centre_now(teacher_temp).to(protos)  # type: ignore[operator]
    y = sample_head_outputs(network, config, device)
    return assignment_usage(y, protos, center, teacher_temp, head_is_vmf(head))
