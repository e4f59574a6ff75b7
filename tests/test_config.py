"""The configuration tree: defaults, recipes, overrides, unknown keys, TOML round trip."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fastproto.config import (
    FOLLOW_NETWORK,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    merge,
    to_dict,
    to_toml,
)


def test_defaults_follow_paper1_table6() -> None:
    c = TrainConfig()
    assert c.model.arch == "vit_small_patch16_224" and c.model.drop_path == 0.1
    assert (c.head.num_prototypes, c.head.norm, c.head.shared) == (8192, "vmf", True)
    assert (c.method.name, c.method.centering, c.method.koleo_proto) == ("ibot", "probability", 0.1)
    assert (c.method.warmup_teacher_temp, c.method.teacher_temp) == (0.04, 0.07)
    assert c.method.teacher_temp_warmup_epochs == 30 and c.method.student_temp == 0.1
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs) == (2e-3, 1e-6, 10)
    assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.clip_grad) == (0.04, 0.4, 3.0)
    assert (c.optim.momentum_teacher, c.optim.freeze_last_layer_epochs) == (0.996, 1)
    assert (c.data.global_crops, c.data.local_crops) == (2, 10)
    assert c.method.pred_ratio == (0.0, 0.3) and c.method.pred_ratio_var == (0.0, 0.2)


def test_toml_round_trip_gives_an_equal_config() -> None:
    c = load_config("demo", ["optim.lr=0.5", 'data.path=/x/y "q"', "method.name=dino"])
    again = from_dict(tomllib.loads(to_toml(c)))
    assert again == c
    assert to_dict(again)["optim"]["lr"] == 0.5 and again.data.path == '/x/y "q"'


def test_overrides_are_typed_and_int_widens_to_float() -> None:
    c = apply_overrides(
        TrainConfig(), ["optim.lr=1", "head.shared=false", "data.local_scale=[0.1, 0.2]"]
    )
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.head.shared is False and c.data.local_scale == (0.1, 0.2)
    with pytest.raises(ValueError, match="head.num_prototypes must be an integer"):
        apply_overrides(TrainConfig(), ["head.num_prototypes=1.5"])


def test_unknown_key_names_the_key_and_the_nearest() -> None:
    with pytest.raises(ValueError, match=r"'optim\.lrr'.*did you mean 'optim\.lr'"):
        apply_overrides(TrainConfig(), ["optim.lrr=1e-3"])
    with pytest.raises(ValueError, match="must look like key=value"):
        apply_overrides(TrainConfig(), ["optim.lr"])


def test_recipe_unknown_key_names_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[head]\nnum_protos = 3\n")
    with pytest.raises(ValueError, match=r"num_protos.*r\.toml.*head\.num_prototypes"):
        load_config(str(recipe))


def test_recipe_then_override_order() -> None:
    c = load_config("demo", ["optim.epochs=7"])
    assert c.optim.epochs == 7
    assert c.model.arch != TrainConfig().model.arch  # the demo recipe picked a small ViT


@pytest.mark.parametrize(
    "override, message",
    [
        ("head.num_prototypes=0", "head.num_prototypes must be positive"),
        ("head.norm=cosine", "head.norm must be one of"),
        ("method.centering=batch", "method.centering must be one of"),
        ("run.keep_last=0", "run.keep_last must be positive"),
        ("method.me_max=-1", "method.me_max is a loss weight"),
        ("method.koleo_proto=-0.1", "method.koleo_proto is a loss weight"),
    ],
)
def test_bad_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_recipe_lists_bundled_ones() -> None:
    with pytest.raises(ValueError, match="not found; bundled recipes: .*demo"):
        load_config("no-such-recipe")


def test_merge_rejects_non_table_section() -> None:
    with pytest.raises(ValueError, match="unknown config key 'seed'"):
        merge(TrainConfig(), {"seed": 3}, "here")


@pytest.mark.parametrize(
    "override,message",
    [
        ("augment.grey_p=1.5", "augment.grey_p is a probability"),
        ("augment.blur_p=[1.0, 0.1, -0.5]", r"augment.blur_p\[2\] is a probability"),
        ("augment.blur_p=[1.0, 0.1]", "augment.blur_p must be a list of 3 numbers"),
        ("augment.blur_sigma=[2.0, 0.1]", "0 < lo <= hi"),
        ("augment.brightness=1.0", r"augment.brightness must be in \[0, 1\)"),
        ("augment.blur_kernel_fraction=0", "blur_kernel_fraction"),
        ('model.arch="vit_huge"', "unknown model.arch 'vit_huge'; choose one of"),
        ('model.arch="timm:not_a_model"', "timm has no model 'not_a_model'"),
    ],
)
def test_augment_and_arch_values_are_checked(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("demo", [override])


def test_ibot_refuses_a_backbone_without_patch_tokens() -> None:
    with pytest.raises(ValueError, match="has none; use method.name='dino'"):
        load_config("demo", ['model.arch="resnet_small_28"', 'method.name="ibot"'])
    assert load_config("demo", ['model.arch="timm:resnet10t"']).model.arch == "timm:resnet10t"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.prototype_weight_decay=0.4"], "set together: both -1"),
        (["optim.prototype_weight_decay=-0.5", "optim.prototype_weight_decay_end=0.1"], ">= 0"),
    ],
)
def test_prototype_decay_schedule_is_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("demo", overrides)


def test_old_checkpoint_switch_reads_as_a_prototype_decay_schedule() -> None:
    tree = to_dict(TrainConfig())
    del tree["optim"]["prototype_weight_decay"], tree["optim"]["prototype_weight_decay_end"]
    off = from_dict(tree | {"head": tree["head"] | {"prototype_weight_decay": False}})
    assert (off.optim.prototype_weight_decay, off.optim.prototype_weight_decay_end) == (0.0, 0.0)
    on = from_dict(tree | {"head": tree["head"] | {"prototype_weight_decay": True}})
    assert on.optim.prototype_weight_decay == FOLLOW_NETWORK
