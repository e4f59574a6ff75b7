"""Configuration values that used to pass unnoticed, and the words of the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastproto.config import TrainConfig, apply_overrides, load_config, recipe_path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr must be positive"),
        ("optim.lr=0", "optim.lr must be positive"),
        ("run.max_steps=-1", "run.max_steps must be >= 0"),
        ("optim.min_lr=-1e-6", "optim.min_lr must be >= 0"),
        ("data.workers=-2", "data.workers must be >= 0"),
        ("optim.lr=nan", "optim.lr must be a finite number"),
        ("method.teacher_temp=inf", "method.teacher_temp must be a finite number"),
        ("data.local_scale=[nan, 0.2]", "data.local_scale must be a finite number"),
    ],
)
def test_values_that_train_nothing_or_nonsense_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_a_recipe_path_that_does_not_exist_is_not_a_bundled_recipe(tmp_path: Path) -> None:
    for missing in (str(tmp_path / "demo.toml"), str(tmp_path / "demo"), "demo.toml"):
        with pytest.raises(ValueError, match="does not exist; check the path"):
            recipe_path(missing)
    assert recipe_path("demo").name == "demo.toml"  # a bare name means a bundled recipe
    own = tmp_path / "demo.toml"
    own.write_text("[optim]\nepochs = 3\n")
    assert load_config(str(own)).optim.epochs == 3


def test_unknown_keys_get_a_hint_only_when_one_is_near() -> None:
    with pytest.raises(ValueError) as info:
        apply_overrides(TrainConfig(), ["optim.learning_rate=1"])
    assert "did you mean" not in str(info.value)
    with pytest.raises(ValueError, match=r"did you mean 'run\.seed'"):
        apply_overrides(TrainConfig(), ["optim.seed=1"])  # the right name in the wrong section
    with pytest.raises(ValueError, match=r"did you mean 'optim\.batch_size'"):
        apply_overrides(TrainConfig(), ["batchsize=1"])


def test_type_errors_read_as_english() -> None:
    with pytest.raises(ValueError, match="head.num_prototypes must be an integer, got 1.5"):
        apply_overrides(TrainConfig(), ["head.num_prototypes=1.5"])
    with pytest.raises(ValueError, match="optim.lr must be a number, got 'fast'"):
        apply_overrides(TrainConfig(), ["optim.lr=fast"])


def test_data_workers_defaults_to_the_cores_this_process_has() -> None:
    """The default used to be 8, which FFCV refuses on a machine with fewer cores."""
    from fastproto.data.loader import default_workers, resolve_workers

    assert TrainConfig().data.workers == 0
    assert resolve_workers(0) == default_workers()
    assert resolve_workers(10_000) == default_workers()
    assert resolve_workers(1) == 1
