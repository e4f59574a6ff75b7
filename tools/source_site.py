"""The fastproto package as a tree of links, importable from PYTHONPATH without an install.

For a machine where `pip install --no-build-isolation -e .` cannot run: offline with a
setuptools that cannot build a wheel (older than 70.1 without the `wheel` package), or an
environment whose site-packages is read-only. pyproject.toml's [tool.setuptools.package-dir]
maps kernels/ and data_prep/ under fastproto.*; this makes DIR/fastproto, a link to each entry
of fastproto/ plus one per mapped package, so `import fastproto.kernels` resolves from DIR.

The checkout's own fastproto/ lacks the mapped packages, so it must not come first on sys.path,
as it does for `python3 -m` and `python3 -c` run from the repository root (the tests start such
children). PYTHONSAFEPATH=1 (Python >= 3.11) leaves the current folder off sys.path, and unlike
-P the children inherit it; the bench scripts put their own folder on sys.path themselves.

    python3 tools/source_site.py DIR && PYTHONPATH=DIR PYTHONSAFEPATH=1 python3 -m pytest tests
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fastproto"


def mapped_packages(root: Path = ROOT) -> dict[str, Path]:
    """{dotted name under fastproto: source folder} from pyproject.toml's package-dir."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in package_dir.items() if name != PACKAGE}


def link_tree(site: Path, root: Path = ROOT) -> Path:
    """Make site/fastproto (site must be missing or empty) -> the package folder made."""
    if site.exists() and any(site.iterdir()):
        raise SystemExit(f"{site} is not empty: pass a new or empty folder")
    package = site / PACKAGE
    package.mkdir(parents=True)
    mapped = mapped_packages(root)
    for entry in sorted((root / PACKAGE).iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapped.items():
        parts = name.split(".")
        if len(parts) != 2 or (package / parts[1]).exists():
            raise SystemExit(f"cannot place {name} (from {folder}) in the link tree")
        (package / parts[1]).symlink_to(folder)
    return package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="a new or empty folder to put on PYTHONPATH")
    args = parser.parse_args(argv)
    package = link_tree(args.site.resolve())
    print(f"{package}: fastproto and {', '.join(mapped_packages())} as links", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
