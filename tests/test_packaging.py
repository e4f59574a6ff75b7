"""The package installs under the names the README promises."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"kernels": "fastproto.kernels", "data_prep": "fastproto.data_prep"}


def _package_dirs() -> set[str]:
    names = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in {".venv", "tests", "bench", "build"}:
            continue
        top = MAPPED.get(rel.parts[0], rel.parts[0])
        names.add(".".join([top, *rel.parts[1:]]))
    return names


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _package_dirs() == listed


def test_kernels_and_data_prep_import_under_fastproto_only() -> None:
    for name in MAPPED.values():
        assert importlib.import_module(name).__file__
    # No top-level `kernels` from this project: that name belongs to a PyPI package.
    probe = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else '')"
    origin = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert str(ROOT / "kernels") not in origin.stdout


def test_fastproto_env_prints_versions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fastproto", "env"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("python", "torch", "triton", "timm", "ffcv", "DALI", "GPU"):
        assert any(line.startswith(name) for line in out.splitlines()), name
