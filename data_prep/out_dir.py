"""What a conversion may do with an existing OUT: skip it, refuse it, or clean up its own files.

data_prep deletes only files it wrote. It knows them from OUT/manifest.json (its `files`; a
manifest with "complete": false is written before the outputs are renamed, so a run cut off
after that still lists them) and from the `.partial-*` temporary names (see atomic.py).

    OUT missing, empty, or holding only such files   -> convert (an unfinished run is redone)
    OUT finished, same format, dataset, source and options (workers aside)   -> done, skipped
    OUT finished with anything different   -> refused unless --overwrite
    OUT holding files data_prep did not write   -> refused unless --overwrite
With --overwrite the files the manifest lists, the manifest and the temporaries are deleted;
other files stay, and a file data_prep did not write where an output is to go
(OUT/<split>.beton, OUT/<split>/shard-*) stops the run, since it would be replaced or read
as part of the output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .atomic import MANIFEST_NAME, find_temporaries
from .manifest import TOOL
from .sources import DataPrepError

_SHOWN = 5


def own_manifest(out: Path) -> dict[str, Any] | None:
    """OUT/manifest.json when data_prep wrote it (complete or not), else None."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("tool") != TOOL:
        return None
    return manifest


def _listed(out: Path, manifest: dict[str, Any] | None) -> set[Path]:
    if manifest is None:
        return set()
    return {out / rel for rel in manifest.get("files", {})} | {out / MANIFEST_NAME}


def _foreign(out: Path, manifest: dict[str, Any] | None) -> list[Path]:
    """Files under OUT that data_prep did not write."""
    ours = _listed(out, manifest) | set(find_temporaries(out))
    return sorted(
        p for p in out.rglob("*") if not p.is_dir() and p not in ours and p.parent not in ours
    )


def _names(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN])
    return shown + (f" (and {len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else "")


def _differences(manifest: dict[str, Any], request: dict[str, Any]) -> list[str]:
    def comparable(options: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if k != "workers"}  # output does not depend

    had = {**manifest, "options": comparable(manifest.get("options", {}))}
    want = {**request, "options": comparable(request["options"])}
    return [
        f"{key} {had.get(key)!r} (asked: {want[key]!r})"
        for key in want
        if had.get(key) != want[key]
    ]


def check_out(out: Path, request: dict[str, Any], overwrite: bool) -> bool:
    """True when OUT already holds this conversion; raises DataPrepError when OUT may not be
    used (see the module docstring); False when the conversion is to run."""
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"OUT {out} is a file: pass a directory (it is created if missing).")
    if not out.is_dir():
        return False
    manifest = own_manifest(out)
    if manifest is not None and manifest.get("complete") is True and not overwrite:
        differs = _differences(manifest, request)
        if not differs:
            return True
        raise DataPrepError(
            f"OUT {out} holds a finished conversion with other settings: {'; '.join(differs)}. "
            "Pass --overwrite to replace it, or choose another OUT."
        )
    foreign = _foreign(out, manifest)
    if foreign and not overwrite:
        raise DataPrepError(
            f"OUT {out} holds {len(foreign)} file(s) data_prep did not write: {_names(foreign)}. "
            "Choose another (or an empty) OUT, or pass --overwrite to write beside them "
            "(only files listed in OUT's manifest.json are then deleted)."
        )
    return False


def check_collisions(out: Path, fmt: str, splits: list[str]) -> None:
    """Refuse when a file data_prep did not write sits where an output is to go."""
    if fmt == "ffcv":
        targets = [out / f"{split}.beton" for split in splits]
    else:
        targets = [p for split in splits for p in sorted((out / split).glob("shard-*"))]
    foreign = set(_foreign(out, own_manifest(out)))
    clash = [p for p in targets if p in foreign]
    if clash:
        raise DataPrepError(
            f"{_names(clash)}: not written by data_prep, where its output is to go (it would be "
            "replaced or read as part of it). Move it away or choose another OUT."
        )


def clean(out: Path) -> None:
    """Delete what data_prep wrote in OUT: the manifest first, then the files it lists and
    the temporaries; split folders left empty go too."""
    manifest = own_manifest(out)
    if manifest is not None:
        (out / MANIFEST_NAME).unlink()
    listed = _listed(out, manifest)
    for path in sorted(listed | set(find_temporaries(out))):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for sub in {p.parent for p in listed if p.parent != out}:
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
