"""The study grid: a small TOML file expanded into named training runs.

A grid file holds a base (a recipe and `key=value` overrides), the main axes, and named extra
groups for ablations. Each group is the main axes with some axes replaced; the runs of all groups
are the Cartesian products, merged by settings (a run in two groups runs once)::

    recipe = "demo"                      # bundled recipe name or a path
    overrides = ["optim.epochs=1"]       # applied after the recipe, before the axes
    demo_images = 8000                   # images per split of the demo data (empty data.path)

    [eval]                               # evaluation of each finished run
    linear_epochs = 100
    fewshot_shots = [1, 2, 5]

    [axes]
    num_prototypes = [256, 1024]         # head.num_prototypes (K)
    regulariser = ["none", "koleo-data", "koleo-proto"]
    koleo_lambda = [0.1]                 # weight of the KoLeo term (lambda)
    norm = ["vmf"]                       # head.norm: l2, free, vmf
    centering = ["probability"]          # logit, probability, sinkhorn, me-max
    batch_size = [128]                   # optim.batch_size
    seed = [0, 1]                        # run.seed

    [groups.lambda]                      # an ablation at one K
    num_prototypes = [1024]
    regulariser = ["koleo-proto"]
    koleo_lambda = [0.0, 0.02, 0.1, 0.5]
    overrides = []                       # optional extra overrides for this group

Settings are canonical: with regulariser "none" (or lambda 0) the run is the baseline without
KoLeo-proto, with lambda 0 (method.koleo_data stays as the base sets it: put
"method.koleo_data=0.0" in the overrides for a baseline without any KoLeo term), so the
lambda = 0 row of the ablation is the baseline run. A run's id is
read from its settings plus a short hash of everything that determines it (recipe text, all
overrides, demo size), so changing the base gives new ids and never reuses stale results.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastproto.config import CHOICES, recipe_path

AXES = ("num_prototypes", "regulariser", "koleo_lambda", "norm", "centering", "batch_size", "seed")
REGULARISERS = ("none", "koleo-data", "koleo-proto")
CENTERINGS = ("logit", "probability", "sinkhorn", "me-max")
NORMS = ("l2", "free", "vmf")
DEFAULT_LAMBDA = 0.1
TOP_KEYS = ("recipe", "overrides", "demo_images", "eval", "axes", "groups")
EVAL_DEFAULTS: dict[str, Any] = {
    "knn_k": [10, 20],
    "linear": True,
    "linear_epochs": 100,
    "fewshot": True,
    "fewshot_shots": [1, 2, 5],
    "eps": 0.025,
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: its id, the groups it belongs to, its settings and its overrides."""

    run_id: str
    groups: tuple[str, ...]
    settings: dict[str, Any]
    overrides: tuple[str, ...]


@dataclass
class Grid:
    recipe: str
    overrides: list[str]
    demo_images: int
    eval: dict[str, Any]
    runs: list[RunSpec] = field(default_factory=list)


def _check_axis(name: str, values: Any, where: str) -> list[Any]:
    if name not in AXES:
        raise ValueError(f"unknown axis {name!r} in {where}; valid axes are {list(AXES)}")
    if not isinstance(values, list):
        raise ValueError(f"axis {name!r} in {where} must be a list, e.g. {name} = [...]")
    if not values:
        raise ValueError(f"axis {name!r} in {where} is empty; give at least one value or drop it")
    allowed = {"regulariser": REGULARISERS, "norm": NORMS, "centering": CENTERINGS}.get(name)
    for value in values:
        if allowed is not None and value not in allowed:
            raise ValueError(f"axis {name!r} in {where}: {value!r} is not one of {allowed}")
        if name == "koleo_lambda" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        ):
            raise ValueError(f"axis koleo_lambda in {where}: {value!r} must be a number >= 0")
        minimum = 0 if name == "seed" else 1
        if name in ("num_prototypes", "batch_size", "seed") and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        ):
            raise ValueError(f"axis {name!r} in {where}: {value!r} must be an integer >= {minimum}")
    return values


def _check_overrides(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"overrides in {where} must be a list of 'key=value' strings")
    return list(value)


def canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """Regulariser 'none' and lambda 0 are the same run: both become none with lambda 0.

    A regulariser without a lambda axis gets paper 1's lambda = 0.1; keys follow AXES order.
    """
    out = dict(settings)
    if "regulariser" in out and "koleo_lambda" not in out:
        out["koleo_lambda"] = DEFAULT_LAMBDA
    if "koleo_lambda" in out:
        out["koleo_lambda"] = float(out["koleo_lambda"])
    if out.get("regulariser") == "none" or out.get("koleo_lambda") == 0.0:
        if "regulariser" in out:
            out["regulariser"] = "none"
        if "koleo_lambda" in out or "regulariser" in out:
            out["koleo_lambda"] = 0.0
    return {name: out[name] for name in AXES if name in out}


ME_MAX_WEIGHT = 1.0  # MSN's weight of the ME-MAX penalty


def centering_overrides(name: str) -> list[str]:
    """The trainer settings for a grid centring.

    'me-max' is ME-MAX as paper 1 compares it: no teacher centring, and the penalty
    -H(batch-mean student prediction) with weight ME_MAX_WEIGHT (method.me_max).
    """
    if name == "me-max":
        return ['method.centering="none"', f"method.me_max={ME_MAX_WEIGHT!r}"]
    if name not in CHOICES["method.centering"]:
        raise ValueError(f"unknown centring {name!r}; choose one of {CENTERINGS}")
    return [f'method.centering="{name}"']


def settings_overrides(settings: dict[str, Any]) -> list[str]:
    """The dotted overrides that realise one run's settings."""
    out: list[str] = []
    if "num_prototypes" in settings:
        out.append(f"head.num_prototypes={settings['num_prototypes']}")
    lam = settings.get("koleo_lambda", DEFAULT_LAMBDA)
    regulariser = settings.get("regulariser")
    if regulariser is not None:
        # The axis regularises the prototypes; KoLeo on the data stays as the base sets it,
        # except in "koleo-data" runs, which compare it against KoLeo-proto at the same lambda.
        proto = lam if regulariser == "koleo-proto" else 0.0
        out.append(f"method.koleo_proto={float(proto)!r}")
        if regulariser == "koleo-data":
            out.append(f"method.koleo_data={float(lam)!r}")
    elif "koleo_lambda" in settings:
        out.append(f"method.koleo_proto={float(lam)!r}")
    if "norm" in settings:
        out.append(f'head.norm="{settings["norm"]}"')
    if "centering" in settings:
        out += centering_overrides(settings["centering"])
    if "batch_size" in settings:
        out.append(f"optim.batch_size={settings['batch_size']}")
    if "seed" in settings:
        out.append(f"run.seed={settings['seed']}")
    return out


def run_id(settings: dict[str, Any], fingerprint: str) -> str:
    """A readable, deterministic directory name: the settings in a fixed order plus a hash."""
    parts = []
    if "num_prototypes" in settings:
        parts.append(f"K{settings['num_prototypes']}")
    if "regulariser" in settings or "koleo_lambda" in settings:
        reg = settings.get("regulariser", "lambda")
        lam = settings.get("koleo_lambda")
        parts.append(reg if reg == "none" or lam is None else f"{reg}{lam:g}")
    parts += [str(settings[k]) for k in ("norm", "centering") if k in settings]
    if "batch_size" in settings:
        parts.append(f"b{settings['batch_size']}")
    if "seed" in settings:
        parts.append(f"s{settings['seed']}")
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:8]
    return "-".join(parts + [digest])


def _expand(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = [name for name in AXES if name in axes]
    return [
        canonical(dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(axes[n] for n in names))
    ]


def _parse_eval(tree: Any, where: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise ValueError(f"[eval] in {where} must be a table")
    unknown = sorted(set(tree) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown [eval] keys {unknown} in {where}; valid: {list(EVAL_DEFAULTS)}")
    return EVAL_DEFAULTS | tree


def _groups(tree: dict[str, Any], where: str) -> dict[str, tuple[dict[str, list[Any]], list[str]]]:
    """{group name: (axes, extra overrides)}; 'main' is the [axes] table itself."""
    main = tree.get("axes", {})
    if not isinstance(main, dict):
        raise ValueError(f"[axes] in {where} must be a table of lists")
    base = {name: _check_axis(name, values, f"{where} [axes]") for name, values in main.items()}
    out: dict[str, tuple[dict[str, list[Any]], list[str]]] = {"main": (base, [])} if base else {}
    groups = tree.get("groups", {})
    if not isinstance(groups, dict):
        raise ValueError(f"[groups] in {where} must hold tables like [groups.lambda]")
    for name, table in groups.items():
        if not isinstance(table, dict):
            raise ValueError(f"group {name!r} in {where} must be a table [groups.{name}]")
        label = f"{where} [groups.{name}]"
        extra = _check_overrides(table.get("overrides", []), label)
        axes = {k: _check_axis(k, v, label) for k, v in table.items() if k != "overrides"}
        out[name] = (base | axes, extra)
    if not out:
        raise ValueError(f"{where} defines no runs; add an [axes] table or a [groups.NAME] table")
    return out


def parse_grid(tree: dict[str, Any], where: str = "grid") -> Grid:
    """A parsed grid TOML tree -> Grid with every run expanded, merged and named."""
    unknown = sorted(set(tree) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {where}; valid top-level keys: {TOP_KEYS}")
    recipe = tree.get("recipe", "demo")
    if not isinstance(recipe, str):
        raise ValueError(f"recipe in {where} must be a recipe name or path string")
    demo_images = tree.get("demo_images", 8000)
    if isinstance(demo_images, bool) or not isinstance(demo_images, int) or demo_images < 1:
        raise ValueError(f"demo_images in {where} must be an integer >= 1, got {demo_images!r}")
    grid = Grid(
        recipe,
        _check_overrides(tree.get("overrides", []), where),
        demo_images,
        _parse_eval(tree.get("eval", {}), where),
    )
    recipe_text = recipe_path(recipe).read_text()
    merged: dict[str, RunSpec] = {}
    for name, (axes, extra) in _groups(tree, where).items():
        for settings in _expand(axes):
            overrides = tuple(settings_overrides(settings) + extra)
            fingerprint = json.dumps([recipe_text, grid.overrides, overrides, demo_images])
            rid = run_id(settings, fingerprint)
            old = merged.get(rid)
            groups = (old.groups if old else ()) + (name,)
            merged[rid] = RunSpec(rid, groups, settings, overrides)
    grid.runs = list(merged.values())
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid TOML file; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {path} not found; pass --grid with a TOML grid file")
    try:
        tree = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"grid file {path} is not valid TOML: {err}") from err
    return parse_grid(tree, str(path))
