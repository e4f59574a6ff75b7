"""Grid files: expansion into runs, merging of shared runs, ids, overrides, and clear errors."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pytest

from fastproto.config import load_config
from fastproto.study.commands import add_study_commands
from fastproto.study.grid import load_grid, parse_grid

REPO = Path(__file__).resolve().parents[1]


def small_grid() -> dict:
    return {
        "recipe": "demo",
        "overrides": ["run.max_steps=2"],
        "axes": {"num_prototypes": [64, 128], "regulariser": ["none", "koleo-proto"], "seed": [0]},
        "groups": {
            "lambda": {
                "num_prototypes": [64],
                "regulariser": ["koleo-proto"],
                "koleo_lambda": [0, 0.02, 0.1],
            }
        },
    }


def test_expansion_merges_runs_shared_by_groups() -> None:
    grid = parse_grid(small_grid())
    # main: 2 K x 2 regularisers; lambda: 3 values at K 64, of which 0 (= none) and 0.1 are in main
    assert len(grid.runs) == 4 + 1
    by_settings = {tuple(sorted(r.settings.items())): r for r in grid.runs}
    base = by_settings[
        (("koleo_lambda", 0.0), ("num_prototypes", 64), ("regulariser", "none"), ("seed", 0))
    ]
    assert base.groups == ("main", "lambda")
    kp = by_settings[
        (("koleo_lambda", 0.1), ("num_prototypes", 64), ("regulariser", "koleo-proto"), ("seed", 0))
    ]
    assert kp.groups == ("main", "lambda")
    assert set(kp.overrides) == {"head.num_prototypes=64", "method.koleo_proto=0.1", "run.seed=0"}
    assert "method.koleo_proto=0.0" in base.overrides
    # KoLeo on the data is the base's in both: the pair differs in KoLeo-proto alone
    recipe_koleo_data = load_config("demo").method.koleo_data
    for spec in (base, kp):
        assert load_config("demo", list(spec.overrides)).method.koleo_data == recipe_koleo_data


def test_overrides_resolve_to_the_settings() -> None:
    grid = parse_grid(
        {
            "axes": {
                "num_prototypes": [96],
                "regulariser": ["koleo-data"],
                "koleo_lambda": [0.5],
                "norm": ["l2"],
                "centering": ["sinkhorn"],
                "batch_size": [48],
                "seed": [3],
            }
        }
    )
    (spec,) = grid.runs
    config = load_config("demo", list(spec.overrides))
    assert config.head.num_prototypes == 96
    assert (config.method.koleo_data, config.method.koleo_proto) == (0.5, 0.0)
    assert config.head.norm == "l2" and config.method.centering == "sinkhorn"
    assert (config.optim.batch_size, config.run.seed) == (48, 3)


def test_me_max_is_the_penalty_without_teacher_centring() -> None:
    (spec,) = parse_grid({"axes": {"centering": ["me-max"]}}).runs
    config = load_config("demo", list(spec.overrides))
    assert config.method.centering == "none" and config.method.me_max == 1.0
    (other,) = parse_grid({"axes": {"centering": ["sinkhorn"]}}).runs
    assert load_config("demo", list(other.overrides)).method.me_max == 0.0


def test_ids_are_deterministic_unique_and_follow_the_base() -> None:
    first = [r.run_id for r in parse_grid(small_grid()).runs]
    assert first == [r.run_id for r in parse_grid(small_grid()).runs]
    assert len(set(first)) == len(first)
    assert all(" " not in rid and "/" not in rid for rid in first)
    changed = small_grid() | {"overrides": ["run.max_steps=3"]}
    assert not set(first) & {r.run_id for r in parse_grid(changed).runs}


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"axes": {"heads": [1]}}, "unknown axis 'heads'"),
        ({"axes": {"num_prototypes": []}}, "axis 'num_prototypes' in grid [axes] is empty"),
        ({"axes": {"regulariser": ["koleo"]}}, "'koleo' is not one of"),
        ({"axes": {"num_prototypes": [0]}}, "must be an integer >= 1"),
        ({"axes": {"koleo_lambda": [-0.1]}}, "must be a number >= 0"),
        ({"axes": {"seed": 0}}, "must be a list"),
        ({"axes": {"seed": [0]}, "sweep": 1}, "unknown keys ['sweep']"),
        ({"axes": {"seed": [0]}, "eval": {"knn": 1}}, "unknown [eval] keys ['knn']"),
        ({"groups": {"ab": {"norms": ["l2"]}}}, "unknown axis 'norms' in grid [groups.ab]"),
        ({"groups": {"ab": {"norm": []}}}, "axis 'norm' in grid [groups.ab] is empty"),
        ({}, "defines no runs"),
        ({"axes": {"seed": [0]}, "overrides": "a=1"}, "list of 'key=value' strings"),
    ],
)
def test_grid_errors_name_the_problem(tree: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_grid(tree)
    assert message in str(info.value)


def test_load_grid_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_grid(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("axes = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_grid(bad)


def test_cpu_grid_has_the_planned_runs() -> None:
    grid = load_grid(REPO / "docs" / "results" / "grid_cpu.toml")
    main = {
        (k, reg, s)
        for k, reg, s in itertools.product(
            (256, 1024, 4096, 16384), ("none", "koleo-data", "koleo-proto"), (0, 1)
        )
    }
    found = {
        (r.settings["num_prototypes"], r.settings["regulariser"], r.settings["seed"])
        for r in grid.runs
        if "main" in r.groups
    }
    assert found == main
    lambdas = sorted(r.settings["koleo_lambda"] for r in grid.runs if "lambda" in r.groups)
    assert lambdas == [0.0, 0.0, 0.02, 0.02, 0.1, 0.1, 0.5, 0.5]
    cells = {
        (r.settings["norm"], r.settings["centering"])
        for r in grid.runs
        if "norm_centering" in r.groups
    }
    assert len(cells) == 12
    assert len(grid.runs) == 24 + 4 + 11
    for spec in grid.runs:  # every run resolves to a valid config
        load_config(grid.recipe, grid.overrides + list(spec.overrides))


def test_sweep_command_dry_run_and_bad_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="fastproto")
    add_study_commands(parser.add_subparsers(dest="command", required=True))
    grid = str(REPO / "docs" / "results" / "grid_cpu.toml")
    args = parser.parse_args(["sweep", "--grid", grid, "--out", str(tmp_path), "--dry-run"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "39 runs" and len(lines) == 40
    assert not (tmp_path / "results").exists()  # a dry run writes nothing
    bad = tmp_path / "bad.toml"
    bad.write_text("[axes]\nnum_prototypes = []\n")
    args = parser.parse_args(["sweep", "--grid", str(bad), "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "axis 'num_prototypes'" in capsys.readouterr().err
