"""tools/source_site.py: the package importable from a link tree on PYTHONPATH, with no install
(the GPU suite's fallback where `pip install -e .` cannot build)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import source_site  # noqa: E402


def test_the_link_tree_serves_every_mapped_package_from_the_checkout(tmp_path: Path) -> None:
    site = tmp_path / "site"
    source_site.link_tree(site)
    probe = (
        "import fastproto, fastproto.kernels, fastproto.data_prep, fastproto.train;"
        "print(fastproto.__file__); print(fastproto.kernels.__file__);"
        "print(fastproto.data_prep.__file__)"
    )
    # from the repository root, whose own fastproto/ lacks kernels/ and data_prep/
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    files = [Path(line) for line in out.stdout.split()]
    # imported through the tree (not an installed copy), resolving to the checkout's sources
    assert all(f.is_relative_to(site / "fastproto") for f in files), files
    assert [f.resolve() for f in files] == [
        ROOT / "fastproto" / "__init__.py",
        ROOT / "kernels" / "__init__.py",
        ROOT / "data_prep" / "__init__.py",
    ]


def test_the_mapping_is_read_from_pyproject() -> None:
    assert source_site.mapped_packages() == {
        "fastproto.kernels": ROOT / "kernels",
        "fastproto.data_prep": ROOT / "data_prep",
    }


def test_a_folder_with_files_in_it_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        source_site.link_tree(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert keep.read_text() == "mine"
