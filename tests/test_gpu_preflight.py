"""tools/gpu_preflight.py's note on the editable install: which setuptools can build it offline."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import gpu_preflight  # noqa: E402


@pytest.mark.parametrize(
    "version,has_wheel,says",
    [
        ("65.5.0", True, "older than 68"),  # Python 3.11's venv default
        ("69.5.1", False, "`wheel` package"),  # bdist_wheel still lives in `wheel`
        ("69.5.1", True, None),
        ("70.1.0", False, None),  # setuptools builds wheels itself from 70.1
        ("80.9.0", False, None),
    ],
)
def test_the_note_names_what_stops_an_offline_editable_install(
    monkeypatch: pytest.MonkeyPatch, version: str, has_wheel: bool, says: str | None
) -> None:
    monkeypatch.setitem(sys.modules, "setuptools", types.SimpleNamespace(__version__=version))
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name == "wheel":
            return object() if has_wheel else None
        return real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    note = gpu_preflight.editable_install_note()
    if says is None:
        assert note is None
    else:
        assert note is not None and says in note and version in note
