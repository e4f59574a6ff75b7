"""The training configuration: one tree of dataclasses, the single source of truth.

Defaults follow paper 1, Table 6 (iBOT-vMF, ViT-S/16, ImageNet). A recipe TOML file holds only
the differences from these defaults (tables named like the sections below); `key=value`
overrides with dotted keys (``optim.lr=1e-3``) come last. Unknown keys are errors that name the
key and the nearest valid one. `to_toml` writes the resolved tree back out for the run directory.

The learning rate is given per 1024 images and scaled linearly by the global batch:
``lr = optim.lr * optim.batch_size / 1024``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# optim.prototype_weight_decay(_end): the prototype matrices decay on the network's schedule
FOLLOW_NETWORK = -1.0

CHOICES: dict[str, tuple[str, ...]] = {
    "data.backend": ("ffcv", "dali", "folder"),
    "data.resize": ("antialias", "fast"),
    "method.name": ("dino", "ibot"),
    "head.norm": ("vmf", "l2", "free"),
    "head.prototypes": ("gradient", "em"),
    "head.em_dead_policy": ("keep", "reseed", "refill"),
    "head.em_estep": ("uncentred", "centred"),
    "head.em_concentration": ("fitted", "fixed"),
    "method.centering": ("probability", "logit", "sinkhorn", "none"),
    "method.loss_impl": ("auto", "triton", "chunked", "reference"),
    "run.precision": ("auto", "bf16", "fp16", "fp32"),
    "run.device": ("auto", "cpu", "cuda"),
}


@dataclass
class DataConfig:
    path: str = ""  # empty: the embedded Fashion-MNIST demo
    backend: str = "ffcv"
    workers: int = 0  # loader threads/processes; 0: one per CPU core this process may use
    global_crops: int = 2
    local_crops: int = 10
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.25, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.25)
    resize: str = "antialias"  # crop filter; "fast": bilinear below 2x shrink (ffcv, folder)


@dataclass
class AugmentConfig:
    """DINO's photometric multi-crop augmentation (fastproto/data/augment.py); the defaults are
    DINO's. Triples are (global crop 1, global crop 2, local crops): global crop g takes the
    "crop 1" entry for even g and the "crop 2" entry for odd g."""

    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor ~ U(1 - b, 1 + b)
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # shift ~ U(-h, h), in turns of the colour wheel
    grey_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma ~ U(lo, hi), in pixels
    blur_kernel_fraction: float = 0.1  # odd kernel side ~ this fraction of the crop side, >= 3
    solarise_p: tuple[float, float, float] = (0.0, 0.2, 0.0)


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch16_224"
    drop_path: float = 0.1


@dataclass
class HeadConfig:
    num_prototypes: int = 8192
    norm: str = "vmf"
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    shared: bool = True
    # how the prototype matrix is learned: "gradient" (by the loss, as DINO does) or "em" (a vMF
    # mixture fitted by online EM to the teacher's CLS embeddings, no gradient, no decay;
    # fastproto.prototype_em), with its forgetting factor, its policy for dead components and
    # its E-step: the teacher's uncentred softmax (the mixture's own fit) or the centred one
    # (the loss's targets, which the centring steers towards the rarely used components); the
    # CLS loss forms either in its own passes (kernels.Responsibilities)
    prototypes: str = "gradient"
    em_forgetting: float = 0.99
    em_dead_policy: str = "keep"
    # "refill" moves at most this many dead components per step onto the worst-covered rows
    em_refill_per_step: int = 4
    em_estep: str = "uncentred"
    # "fixed": kappa_k = 1 / teacher temperature (unit-norm prototypes), only the directions are
    # fitted; "fitted": kappa_k from each component's mean resultant length, which runs away to
    # one dominant component in the collapse regime (docs/prototype_em.md)
    em_concentration: str = "fixed"


@dataclass
class MethodConfig:
    name: str = "ibot"
    centering: str = "probability"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    koleo_proto: float = 0.1
    koleo_group_size: int = 2048
    koleo_data: float = 0.0
    # ME-MAX (paper 1 section 3): weight of -H(batch-mean student CLS prediction); usually with
    # centering "none". It materialises the student CLS logits [crops * B, K].
    me_max: float = 0.0
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_epochs: int = 30
    patch_loss_weight: float = 1.0
    pred_ratio: tuple[float, float] = (0.0, 0.3)
    pred_ratio_var: tuple[float, float] = (0.0, 0.2)
    loss_impl: str = "auto"


@dataclass
class OptimConfig:
    epochs: int = 800
    batch_size: int = 1024  # global, over all processes
    lr: float = 2e-3  # per 1024 images
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    # AdamW decay of the prototype matrices W [K, D], a cosine schedule of its own (start, end);
    # FOLLOW_NETWORK for both (the default) decays them on the network's schedule above
    prototype_weight_decay: float = -1.0
    prototype_weight_decay_end: float = -1.0
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0  # 0 disables clipping
    freeze_last_layer_epochs: int = 1


@dataclass
class RunConfig:
    out: str = "runs/fastproto"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp16; fp32 on CPU
    checkpoint_every: int = 500  # steps; a checkpoint is also written at each epoch end
    keep_last: int = 3
    max_steps: int = 0  # 0: run all epochs; >0 stops after this global step (smoke runs)
    knn_every_epochs: int = 0  # 0: no kNN during training
    progress: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


def to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples become lists), ready for TOML or JSON."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(config):
        values = dataclasses.asdict(getattr(config, section.name))
        out[section.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return out


def valid_keys() -> list[str]:
    """Every dotted key the configuration accepts, e.g. ``optim.lr``."""
    config = TrainConfig()
    return [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(config)
        for f in dataclasses.fields(getattr(config, section.name))
    ]


def _nearest_key(key: str) -> str | None:
    """A valid key close to `key` (a typo), or one whose last part is close to `key`'s last
    part (a key put in the wrong section, or given without one); None when nothing is near."""
    keys = valid_keys()
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if near:
        return near[0]
    by_name = {k.split(".", 1)[1]: k for k in keys}
    near = difflib.get_close_matches(key.rpartition(".")[2], list(by_name), n=1, cutoff=0.8)
    return by_name[near[0]] if near else None


def _unknown_key(key: str, where: str) -> ValueError:
    near = _nearest_key(key)
    hint = f"; did you mean {near!r}?" if near else "; the keys are listed in fastproto/config.py"
    return ValueError(f"unknown config key {key!r} in {where}{hint}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of the default; ints are accepted for floats."""
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ValueError(f"{key} must be a list of {len(default)} numbers, got {value!r}")
        return tuple(_coerce(key, v, d) for v, d in zip(value, default, strict=True))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        kind = {int: "an integer", float: "a number", str: "a string"}.get(type(default), "?")
        raise ValueError(f"{key} must be {kind}, got {value!r} ({type(value).__name__})")
    return value


def set_key(config: TrainConfig, key: str, value: Any, where: str = "overrides") -> None:
    """Set dotted `key` (``section.name``) on `config`, checking the key and the value's type."""
    section, _, name = key.partition(".")
    if key not in valid_keys():
        raise _unknown_key(key, where)
    target = getattr(config, section)
    setattr(target, name, _coerce(key, value, getattr(target, name)))


def merge(config: TrainConfig, tree: dict[str, Any], where: str) -> TrainConfig:
    """Apply a nested dict (a parsed recipe) onto `config`, in place; returns it."""
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise _unknown_key(section, where)
        for name, value in values.items():
            set_key(config, f"{section}.{name}", value, where)
    return config


def _parse_value(text: str) -> Any:
    """A command-line value, read as a TOML value; bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings (dotted keys, TOML values) onto `config`, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value, e.g. optim.lr=1e-3")
        set_key(config, key.strip(), _parse_value(text.strip()))
    return config


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path that exists, or the name of a bundled recipe (``demo``).

    Only a bare name (no directory, no .toml suffix) means a bundled recipe: a path that does
    not exist is an error, never a bundled file of the same stem."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = Path(str(resources.files("fastproto").joinpath("recipes")))
    names = sorted(p.stem for p in folder.glob("*.toml"))
    bare = "/" not in name_or_path and "\\" not in name_or_path and path.suffix != ".toml"
    if bare and (folder / f"{name_or_path}.toml").is_file():
        return folder / f"{name_or_path}.toml"
    if not bare:
        raise ValueError(f"config file {name_or_path} does not exist; check the path")
    raise ValueError(f"config file {name_or_path!r} not found; bundled recipes: {names}")


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the recipe file (if any), then the overrides; validated."""
    config = TrainConfig()
    if recipe:
        path = recipe_path(recipe)
        try:
            tree = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from err
        merge(config, tree, str(path))
    apply_overrides(config, overrides or [])
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Value checks that types alone do not catch; each message says what to change."""
    _check_finite(config)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    positive = {
        "head.num_prototypes": config.head.num_prototypes,
        "optim.epochs": config.optim.epochs,
        "optim.batch_size": config.optim.batch_size,
        "data.global_crops": config.data.global_crops,
        "method.student_temp": config.method.student_temp,
        "method.teacher_temp": config.method.teacher_temp,
        "method.warmup_teacher_temp": config.method.warmup_teacher_temp,
        "run.keep_last": config.run.keep_last,
        "run.checkpoint_every": config.run.checkpoint_every,
    }
    for key, value in positive.items():
        if value < 1 if isinstance(value, int) else value <= 0:
            raise ValueError(f"{key} must be positive (>= 1 for counts), got {value}")
    for key in ("koleo_proto", "koleo_data", "me_max"):
        weight = getattr(config.method, key)
        if weight < 0:
            raise ValueError(f"method.{key} is a loss weight and must be >= 0 (0 turns it off)")
    at_least_zero = {
        "data.local_crops": config.data.local_crops,
        "data.workers": config.data.workers,  # 0: one per CPU core
        "run.max_steps": config.run.max_steps,  # 0: run all epochs
        "optim.min_lr": config.optim.min_lr,
    }
    for key, value in at_least_zero.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if config.optim.lr <= 0:
        raise ValueError(f"optim.lr must be positive (per 1024 images), got {config.optim.lr}")
    _validate_prototype_decay(config.optim)
    _validate_em(config)
    _validate_augment(config.augment)
    _validate_arch(config)
    momentum = config.method.center_momentum
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"method.center_momentum must be in [0, 1), got {momentum}")


def _validate_prototype_decay(o: OptimConfig) -> None:
    pair = (o.prototype_weight_decay, o.prototype_weight_decay_end)
    follows = [value == FOLLOW_NETWORK for value in pair]
    if any(follows) and not all(follows):
        raise ValueError(
            "optim.prototype_weight_decay and optim.prototype_weight_decay_end are set together: "
            f"both -1 (the network's schedule) or both >= 0, got {list(pair)}"
        )
    if not all(follows) and min(pair) < 0:
        raise ValueError(
            f"optim.prototype_weight_decay(_end) must be >= 0 (0 leaves the prototypes undecayed) "
            f"or -1 for both (the network's schedule), got {list(pair)}"
        )


def _validate_em(config: TrainConfig) -> None:
    if config.head.prototypes != "em":
        return
    if config.head.norm != "vmf":
        raise ValueError(
            f"head.prototypes='em' fits a vMF mixture and needs head.norm='vmf', got "
            f"{config.head.norm!r}"
        )
    if config.method.koleo_proto > 0:
        raise ValueError(
            "method.koleo_proto acts through the prototypes' gradient, which "
            "head.prototypes='em' does not use; set method.koleo_proto=0"
        )
    if not 0.0 < config.head.em_forgetting <= 1.0:
        raise ValueError(f"head.em_forgetting must be in (0, 1], got {config.head.em_forgetting}")
    if config.head.em_refill_per_step < 1:
        raise ValueError(
            "head.em_refill_per_step must be >= 1 (dead components moved per step by "
            f"head.em_dead_policy='refill'), got {config.head.em_refill_per_step}"
        )


def _validate_arch(config: TrainConfig) -> None:
    from fastproto.models import arch_has_patch_tokens, arch_patch_size, check_arch

    check_arch(config.model.arch)
    patch = arch_patch_size(config.model.arch)
    sizes = {"data.global_size": config.data.global_size}
    if config.data.local_crops > 0:
        sizes["data.local_size"] = config.data.local_size
    for key, size in sizes.items():
        if patch is not None and size % patch:
            raise ValueError(
                f"{key}={size} must be a multiple of the patch size {patch} of {config.model.arch}"
            )
    if config.method.name == "ibot" and not arch_has_patch_tokens(config.model.arch):
        raise ValueError(
            f"method.name='ibot' predicts masked patch tokens, but model.arch="
            f"{config.model.arch!r} has none; use method.name='dino' or a ViT backbone"
        )


def _validate_augment(a: AugmentConfig) -> None:
    probabilities = {
        "flip_p": a.flip_p,
        "jitter_p": a.jitter_p,
        "grey_p": a.grey_p,
        **{f"blur_p[{i}]": p for i, p in enumerate(a.blur_p)},
        **{f"solarise_p[{i}]": p for i, p in enumerate(a.solarise_p)},
    }
    for key, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{key} is a probability and must be in [0, 1], got {p}")
    for key in ("brightness", "contrast", "saturation"):
        value = getattr(a, key)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"augment.{key} must be in [0, 1) (factor 1 +- {key}), got {value}")
    if not 0.0 <= a.hue <= 0.5:
        raise ValueError(f"augment.hue must be in [0, 0.5], got {a.hue}")
    lo, hi = a.blur_sigma
    if not 0.0 < lo <= hi:
        raise ValueError(f"augment.blur_sigma must be [lo, hi] with 0 < lo <= hi, got {[lo, hi]}")
    if not 0.0 < a.blur_kernel_fraction <= 1.0:
        raise ValueError(
            f"augment.blur_kernel_fraction must be in (0, 1], got {a.blur_kernel_fraction}"
        )


def _check_finite(config: TrainConfig) -> None:
    """Refuse NaN and infinity in any number of the tree, naming the key."""
    for section, values in to_dict(config).items():
        for name, value in values.items():
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ValueError(f"{section}.{name} must be a finite number, got {value!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(config: TrainConfig) -> str:
    """The whole resolved tree as TOML text (reads back to an equal config)."""
    lines: list[str] = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def from_dict(tree: dict[str, Any], where: str = "checkpoint") -> TrainConfig:
    """A config rebuilt from `to_dict` output (e.g. stored in a checkpoint). Checkpoints written
    before the prototype decay had its own schedule hold head.prototype_weight_decay (a switch):
    off reads as a schedule of 0."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    head = tree.get("head")
    switch = head.pop("prototype_weight_decay", None) if isinstance(head, dict) else None
    if switch is False:
        off = {"prototype_weight_decay": 0.0, "prototype_weight_decay_end": 0.0}
        tree["optim"] = dict(tree.get("optim", {})) | off
    return merge(TrainConfig(), tree, where)
