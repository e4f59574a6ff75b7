"""One training step: student and teacher forward, the loss terms, backward, update, EMA.

Inputs are already augmented float crops, crop-major (rows c*B .. c*B+B-1 are crop c):
    global_crops [G*B, 3, H, W], local_crops [L*B, 3, h, w] (or None), masks
    (iBOT only: fastproto.masked_tokens.MaskedTokens of [G*B, H/p, W/p]; masked patch tokens of
    the student's global crops are replaced by the mask token).

    loss = dino(cls)                                       (fastproto.losses.dino_loss)
         + patch_loss_weight * ibot(masked patch tokens)   (iBOT only)
         + koleo_proto * sum over heads KoLeo(W)           (paper 1, KoLeo-proto)
         + koleo_data * sum over global crops KoLeo(backbone CLS)   (DINOv2-style, off by default)
         + me_max * -H(mean student CLS prediction)          (ME-MAX, off by default)

The teacher sees the global crops unmasked; its patch tokens are read at the same masked
positions. After backward: gradients are unscaled (fp16), clipped per parameter (as DINO and
iBOT do), the last layer's gradients are dropped while it is frozen, the optimizer steps and the
teacher moves to the EMA of the student.

A non-finite loss or gradient norm raises NonFiniteError before anything is updated (in fp16 the
grad scaler skips such steps itself and lowers its scale, as it is meant to). Both checks read
the step's one device-to-host copy, made after the clipping (loss terms, health numbers, grad
norm and teacher entropy together): nothing else in a step makes the host wait for the device
(tests/test_step_host_syncs.py; the value checks of fastproto.value_checks run in debug mode only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from fastproto.centering import Centering, me_max_penalty
from fastproto.config import TrainConfig
from fastproto.ema import ema_update_
from fastproto.errors import NonFiniteError
from fastproto.kernels import LossResult, Responsibilities
from fastproto.kernels.dispatch import resolve_impl
from fastproto.losses import dino_loss, ibot_patch_loss, koleo_data, koleo_proto
from fastproto.masked_tokens import MaskedTokens
from fastproto.models import SSLNetwork, head_is_vmf, head_last_layer, head_prototypes
from fastproto.prototype_em import OnlineVMFMixture
from fastproto.train.health import CollapseWatch, prediction_health
from fastproto.train.metrics import entropy


@dataclass(frozen=True)
class StepValues:
    """Schedule values for one global step."""

    lr: float
    weight_decay: float  # the network's
    prototype_weight_decay: float  # the prototype matrices' W [K, D]
    prototype_decay_clock: float  # sum of lr * prototype_weight_decay up to this step
    teacher_temp: float
    momentum: float
    freeze_last_layer: bool


@dataclass
class TrainState:
    """Everything a step reads or updates; `student_ddp` is the DDP wrapper (or the student)."""

    config: TrainConfig
    student: SSLNetwork
    student_ddp: nn.Module
    teacher: SSLNetwork
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    cls_centering: Centering
    patch_centering: Centering
    amp_dtype: torch.dtype | None
    device: torch.device
    step: int = 0
    initial_prototypes: torch.Tensor | None = None  # CLS head W [K, D] at initialisation
    watch: CollapseWatch | None = None
    prototype_em: OnlineVMFMixture | None = None  # head.prototypes = "em": the CLS prototypes


@dataclass(frozen=True)
class StepLosses:
    """What the forward and the loss terms of one step hand on.

    total             the loss to back-propagate, 0-d.
    shown             loss terms and health numbers as 0-d tensors, not read on the host yet.
    mean_probs        [K], the batch-mean teacher distribution of the CLS loss.
    teacher_y         [G*B, D], the teacher's CLS embeddings, detached.
    responsibilities  the E-step statistics of teacher_y that the CLS loss formed, for
                      head.prototypes = "em" (else None).
    """

    total: torch.Tensor
    shown: dict[str, torch.Tensor]
    mean_probs: torch.Tensor
    teacher_y: torch.Tensor
    responsibilities: Responsibilities | None


def loss_operand_dtype(state: TrainState) -> torch.dtype:
    """The dtype head outputs [N, D] enter the prototype loss in: autocast's (bf16 or fp16) where
    the fused Triton kernels compute it, so that their dots run on tensor cores with float32
    accumulation (prototypes stay float32 parameters and are cast per tile); float32 for the
    chunked and reference paths, which materialise logit blocks in the operands' dtype."""
    impl = resolve_impl(state.config.method.loss_impl, state.device)
    if state.amp_dtype is not None and impl == "triton":
        return state.amp_dtype
    return torch.float32


def _autocast(state: TrainState) -> contextlib.AbstractContextManager[object]:
    if state.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=state.amp_dtype)


def _cls_loss(
    state: TrainState, student_y: torch.Tensor, teacher_y: torch.Tensor, teacher_temp: float
) -> tuple[LossResult, dict[str, torch.Tensor]]:
    """-> (the DINO loss's result, with the E-step statistics when the prototypes are fitted by
    EM (head.em_estep says which softmax), and the health numbers as 0-d tensors)."""
    m = state.config.method
    head, teacher_head = state.student.cls_head, state.teacher.cls_head
    w_s, w_t = head_prototypes(head).float(), head_prototypes(teacher_head).float().detach()
    vmf = head_is_vmf(head)
    centring = state.cls_centering
    center = centring.centre_for_loss(teacher_y, w_t, teacher_temp, vmf, m.loss_impl)  # [K]
    health = prediction_health(
        student_y.float(), teacher_y.float(), w_s, w_t, center, m.student_temp, teacher_temp, vmf
    )
    result = dino_loss(
        student_y,
        teacher_y,
        w_s,
        w_t,
        center,
        state.config.data.global_crops,
        m.student_temp,
        teacher_temp,
        vmf,
        m.loss_impl,
        raw_means=centring.needs_raw_means,
        estep=state.config.head.em_estep if state.prototype_em is not None else None,
    )
    centring.after_loss(result, teacher_y.shape[0])
    return result, health


def _patch_loss(
    state: TrainState,
    student_p: torch.Tensor,
    teacher_p: torch.Tensor,
    masks: MaskedTokens,
    teacher_temp: float,
) -> torch.Tensor:
    m = state.config.method
    head, teacher_head = state.student.patch_head, state.teacher.patch_head
    w_s, w_t = head_prototypes(head).float(), head_prototypes(teacher_head).float().detach()
    vmf = head_is_vmf(head)
    centring = state.patch_centering
    center = centring.centre_for_loss(teacher_p, w_t, teacher_temp, vmf, m.loss_impl)  # [K]
    result = ibot_patch_loss(
        student_p,
        teacher_p,
        masks.image_index,
        masks.num_images,
        w_s,
        w_t,
        center,
        m.student_temp,
        teacher_temp,
        vmf,
        m.loss_impl,
        raw_means=centring.needs_raw_means,
    )
    centring.after_loss(result, teacher_p.shape[0])
    return result.loss


def compute_losses(
    state: TrainState,
    global_crops: torch.Tensor,
    local_crops: torch.Tensor | None,
    masks: MaskedTokens | None,
    teacher_temp: float,
) -> StepLosses:
    """Both networks' forward and every loss term of one step -> StepLosses."""
    m = state.config.method
    with torch.no_grad(), _autocast(state):
        t_out = state.teacher(global_crops, None, masks, mask_input=False)
    with _autocast(state):
        s_out = state.student_ddp(global_crops, local_crops, masks, mask_input=True)
    dt = loss_operand_dtype(state)
    result, health = _cls_loss(state, s_out.cls_y.to(dt), t_out.cls_y.to(dt), teacher_temp)
    total, parts = result.loss, {"dino": result.loss}
    # also with no masked token on this rank: the loss is then a zero attached to the patch
    # head, so under DDP every parameter still gets its (zero) gradient and all-reduces match
    if masks is not None and s_out.patch_y is not None:
        assert t_out.patch_y is not None  # the teacher got the same masks
        s_p, t_p = s_out.patch_y.to(dt), t_out.patch_y.to(dt)
        patch = _patch_loss(state, s_p, t_p, masks, teacher_temp)
        total = total + m.patch_loss_weight * patch
        parts["ibot"] = patch
    if m.koleo_proto > 0:
        reg = torch.stack(
            [
                koleo_proto(head_prototypes(h).float(), m.koleo_group_size)
                for h in state.student.heads()
            ]
        ).sum()
        total = total + m.koleo_proto * reg
        parts["koleo_proto"] = reg
    if m.koleo_data > 0:
        chunks = s_out.cls_features.float().chunk(state.config.data.global_crops)
        reg_d = torch.stack([koleo_data(c) for c in chunks]).sum()
        total = total + m.koleo_data * reg_d
        parts["koleo_data"] = reg_d
    if m.me_max > 0:
        reg_m = _me_max(state, s_out.cls_y.float())
        total = total + m.me_max * reg_m
        parts["me_max"] = reg_m
    parts["loss"] = total
    shown = {name: t.detach() for name, t in parts.items()} | health
    teacher_y = t_out.cls_y.detach()
    return StepLosses(total, shown, result.mean_probs, teacher_y, result.responsibilities)


def _me_max(state: TrainState, student_y: torch.Tensor) -> torch.Tensor:
    """ME-MAX penalty on the student's CLS predictions, student_y [S*B, D]."""
    head = state.student.cls_head
    protos = head_prototypes(head).float()  # [K, D]
    return me_max_penalty(student_y, protos, state.config.method.student_temp, head_is_vmf(head))


def set_schedule(optimizer: torch.optim.Optimizer, values: StepValues) -> None:
    """lr on every group; weight decay by the group's "decay": the network's schedule, the
    prototype matrices' own, or none."""
    decay = {"network": values.weight_decay, "prototypes": values.prototype_weight_decay}
    for group in optimizer.param_groups:
        group["lr"] = values.lr
        group["weight_decay"] = decay.get(group["decay"], 0.0)


def clip_per_parameter(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale each gradient to norm <= max_norm (DINO's clip_gradients); -> the total norm, 0-d
    on the gradients' device (not read here). One fused norm and one fused scale over all
    gradients (torch's multi-tensor ops, as clip_grad_norm_ uses), not 3 launches each."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        device = parameters[0].device if parameters else None
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch.stack(torch._foreach_norm(grads))  # [P]
    if max_norm > 0:
        scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # [P]
        torch._foreach_mul_(grads, list(scales.unbind()))
    return norms.norm()


def backward_and_clip(state: TrainState, total: torch.Tensor, values: StepValues) -> torch.Tensor:
    """Backward, unscale (fp16), clip; -> the gradient norm, 0-d on the device."""
    opt = state.optimizer
    set_schedule(opt, values)
    opt.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(total).backward()
        state.scaler.unscale_(opt)
    else:
        total.backward()
    params = [p for p in state.student.parameters() if p.requires_grad]
    return clip_per_parameter(params, state.config.optim.clip_grad)


def read_on_host(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's numbers [0-d tensors] as floats, in one device-to-host copy: the one host
    sync of a step (a float() each would wait on the device each)."""
    flat = torch.stack(
        [t.detach().double().reshape(()).to(values["loss"].device) for t in values.values()]
    )
    return dict(zip(values, flat.tolist(), strict=True))


def refuse_non_finite(state: TrainState, terms: dict[str, float]) -> None:
    """NonFiniteError, with the gradients dropped, if the loss or (without a grad scaler, which
    skips such steps itself) the gradient norm is NaN or infinite: nothing is updated."""
    if math.isfinite(terms["loss"]) and (
        state.scaler is not None or math.isfinite(terms["grad_norm"])
    ):
        return
    state.optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(terms["loss"]):
        raise NonFiniteError(
            f"the loss is {terms['loss']} at step {state.step} (terms {terms}); the step was not "
            "applied"
        )
    raise NonFiniteError(
        f"the gradient norm is {terms['grad_norm']} at step {state.step}; the step was not applied"
    )


def apply_update(state: TrainState, values: StepValues) -> None:
    """Drop the last layer's gradients while it is frozen, step, move the teacher (EMA)."""
    if values.freeze_last_layer:
        for head in state.student.heads():
            for p in head_last_layer(head):
                p.grad = None
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    with torch.no_grad():
        ema_update_(state.teacher, state.student, values.momentum)


def train_step(
    state: TrainState,
    global_crops: torch.Tensor,
    local_crops: torch.Tensor | None,
    masks: MaskedTokens | None,
    values: StepValues,
) -> tuple[dict[str, float], torch.Tensor]:
    """One optimisation step on prepared crops; -> (loss terms, grad norm and the batch-mean
    teacher entropy as floats, teacher mean probs [K]).

    The host reads the step's numbers once, after the backward and the clipping and before
    anything is updated, so the device is never waited for mid-step and a non-finite loss or
    gradient is still refused before it reaches the weights."""
    losses = compute_losses(state, global_crops, local_crops, masks, values.teacher_temp)
    grad_norm = backward_and_clip(state, losses.total, values)
    mean_probs = losses.mean_probs
    terms = read_on_host(
        losses.shown | {"grad_norm": grad_norm, "teacher_entropy": entropy(mean_probs)}
    )
    refuse_non_finite(state, terms)
    apply_update(state, values)
    refit_prototypes(state, losses, values.teacher_temp)
    state.step += 1
    return terms, mean_probs


@torch.no_grad()
def refit_prototypes(state: TrainState, losses: StepLosses, teacher_temp: float) -> None:
    """head.prototypes = "em": fold this step's E-step statistics of the teacher CLS embeddings
    (formed by the CLS loss, under the W it used: the uncentred teacher softmax, or the loss's
    centred targets with head.em_estep = "centred") into the vMF mixture, and write its W into
    the CLS head of the student and of the teacher, so both use it at the next step."""
    em = state.prototype_em
    if em is None:
        return
    stats = losses.responsibilities
    if stats is None:
        raise ValueError("head.prototypes='em' needs the CLS loss's E-step statistics (estep=)")
    if not em.fit_concentration:  # head.em_concentration = "fixed": unit-norm rows, kappa 1 / tau_t
        em.kappa.fill_(1.0 / teacher_temp)
    y = losses.teacher_y.float()  # [G*B, D], the rows a dead component may be re-seeded from
    moved = em.update_from_statistics(stats.mass, stats.resultant, y.shape[0], seeds=y)
    state.cls_centering.restart_columns(moved)  # a moved component's past centre is not its own
    weight = em.prototypes(teacher_temp)  # [K, D], ||w_k|| / tau_t = kappa_k
    for network in (state.student, state.teacher):
        head_prototypes(network.cls_head).copy_(weight)  # the vMF head's W parameter
