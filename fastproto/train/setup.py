"""Building a run from its config: networks, optimizer, precision, centring, and the state.

The student is wrapped in DistributedDataParallel when the process group has more than one
rank; the teacher starts as an exact copy of the student (no drop path) and never gets
gradients. AdamW parameter groups follow DINO: weights (ndim >= 2) are weight-decayed, biases,
norm scales, tokens and position embeddings are not.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fastproto.centering import Centering, make_centering
from fastproto.config import TrainConfig
from fastproto.models import SSLNetwork, build_network, head_prototypes
from fastproto.prototype_em import OnlineVMFMixture
from fastproto.train.distributed import DistInfo
from fastproto.train.step import TrainState
from fastproto.train.values import prototype_decay_mode


def network_signature(config: TrainConfig) -> dict[str, object]:
    """What a checkpoint must share with the config to be resumed: what sets the shape or the
    meaning of its state (the centring's buffer is a logit EMA, a log-probability EMA or
    Sinkhorn's last u) and the global batch (the position inside the epoch, the lr scale)."""
    h = config.head
    return {
        "arch": config.model.arch,
        "num_prototypes": h.num_prototypes,
        "norm": h.norm,
        "hidden_dim": h.hidden_dim,
        "bottleneck_dim": h.bottleneck_dim,
        "num_layers": h.num_layers,
        "shared_head": h.shared,
        "method": config.method.name,
        "centering": config.method.centering,
        "batch_size": config.optim.batch_size,
    } | ({"prototypes": h.prototypes} if h.prototypes != "gradient" else {})


def build_student(config: TrainConfig, drop_path: float | None = None) -> SSLNetwork:
    h = config.head
    return build_network(
        config.model.arch,
        h.num_prototypes,
        h.norm,
        h.shared,
        drop_path=config.model.drop_path if drop_path is None else drop_path,
        mask_token=config.method.name == "ibot",
        hidden_dim=h.hidden_dim,
        bottleneck_dim=h.bottleneck_dim,
        num_layers=h.num_layers,
    )


def param_groups(model: nn.Module, prototypes: str = "network") -> list[dict[str, object]]:
    """AdamW groups, each with the schedule it decays on ("decay", read by set_schedule):
    weights on the network's; everything 1-d or token-like on none; the prototype matrices
    W [K, D] on the network's, none, or a group of their own ("own"), by `prototypes`
    (fastproto.train.values.prototype_decay_mode). In the vMF head ||w_k|| / tau is the
    concentration kappa_k, so their decay pulls every concentration down."""
    if prototypes not in ("network", "none", "own"):
        raise ValueError(f"prototypes must be 'network', 'none' or 'own', got {prototypes!r}")
    groups: dict[str, list[nn.Parameter]] = {"network": [], "none": [], "prototypes": []}
    plain_names = ("mask_token", "cls_token", "pos_embed")
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("prototype_weight"):
            groups["prototypes" if prototypes == "own" else prototypes].append(p)
        else:
            groups["none" if p.ndim <= 1 or name.endswith(plain_names) else "network"].append(p)
    # the order of old checkpoints (network, none), the prototypes' own group after them
    order = ("network", "none", "prototypes") if prototypes == "own" else ("network", "none")
    return [{"params": groups[decay], "decay": decay, "weight_decay": 0.0} for decay in order]


def build_prototype_em(
    config: TrainConfig, student: SSLNetwork, device: torch.device
) -> OnlineVMFMixture | None:
    """head.prototypes = "em": the mixture that replaces the CLS prototypes' gradient, started
    from the head's initial rows (the same W), and the prototype matrix frozen to the optimizer
    (no gradient, so no AdamW group and no decay). None for "gradient"."""
    h = config.head
    if h.prototypes != "em":
        return None
    weight = head_prototypes(student.cls_head)  # the vMF head's parameter W [K, D] itself
    weight.requires_grad_(False)
    em = OnlineVMFMixture(
        h.num_prototypes,
        h.bottleneck_dim,
        forgetting=h.em_forgetting,
        tau=config.method.warmup_teacher_temp,
        dead_policy=h.em_dead_policy,
        refill_per_step=h.em_refill_per_step,
        fit_concentration=h.em_concentration == "fitted",
    )
    em.initialize(F.normalize(weight.detach().float(), dim=1))
    return em.to(device)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means float32 throughout; CPU runs in float32 unless asked otherwise."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("run.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_state(config: TrainConfig, dist: DistInfo) -> TrainState:
    """A fresh run's state on this process's device (resume loads into it afterwards)."""
    student = build_student(config).to(dist.device)
    teacher = copy.deepcopy(student)
    for block in teacher.modules():  # the teacher never drops paths
        if hasattr(block, "drop_prob"):
            setattr(block, "drop_prob", 0.0)  # noqa: B010
    teacher.requires_grad_(False)
    teacher.eval()
    prototype_em = build_prototype_em(config, student, dist.device)
    student_ddp: nn.Module = student
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        student_ddp = DistributedDataParallel(student, device_ids=ids)
    groups = param_groups(student, prototype_decay_mode(config))
    optimizer = torch.optim.AdamW(groups, lr=0.0)
    dtype = amp_dtype(config.run.precision, dist.device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    m = config.method
    k = config.head.num_prototypes

    def centering() -> Centering:
        module = make_centering(m.centering, k, m.center_momentum, m.sinkhorn_iterations)
        return module.to(dist.device)

    return TrainState(
        config=config,
        student=student,
        student_ddp=student_ddp,
        teacher=teacher,
        optimizer=optimizer,
        scaler=scaler,
        cls_centering=centering(),
        patch_centering=centering(),
        amp_dtype=dtype,
        device=dist.device,
        prototype_em=prototype_em,
    )


def state_dict(state: TrainState) -> dict[str, object]:
    """The unsharded training state (rank 0 writes it; any world size can read it)."""
    return {
        "student": state.student.state_dict(),
        "teacher": state.teacher.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "cls_centering": state.cls_centering.state_dict(),
        "patch_centering": state.patch_centering.state_dict(),
        "step": state.step,
    } | ({"prototype_em": state.prototype_em.state_dict()} if state.prototype_em else {})


def load_state_dict(state: TrainState, saved: dict[str, object]) -> None:
    """Restore what `state_dict` saved into a freshly built state."""
    state.student.load_state_dict(saved["student"])  # type: ignore[arg-type]
    state.teacher.load_state_dict(saved["teacher"])  # type: ignore[arg-type]
    roles = [group["decay"] for group in state.optimizer.param_groups]
    state.optimizer.load_state_dict(saved["optimizer"])  # type: ignore[arg-type]
    for group, role in zip(state.optimizer.param_groups, roles, strict=True):
        group["decay"] = role  # this config's schedule; checkpoints before it carry none
    if state.scaler is not None and saved.get("scaler") is not None:
        state.scaler.load_state_dict(saved["scaler"])  # type: ignore[arg-type]
    state.cls_centering.load_state_dict(saved["cls_centering"])  # type: ignore[arg-type]
    state.patch_centering.load_state_dict(saved["patch_centering"])  # type: ignore[arg-type]
    state.step = int(saved["step"])  # type: ignore[call-overload]
    if state.prototype_em is not None:
        state.prototype_em.load_state_dict(saved["prototype_em"])  # type: ignore[arg-type]
    elif "prototype_em" in saved:
        raise ValueError("it was trained with head.prototypes='em'")
