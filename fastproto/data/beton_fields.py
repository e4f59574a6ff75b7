"""The field layout the FFCV backend reads, checked before FFCV builds its pipeline (which would
fail with a bare KeyError on a .beton written with other fields)."""

from __future__ import annotations

from pathlib import Path

FIELDS = {"image": "RGBImageField", "label": "IntField"}


def check_beton_fields(beton: Path) -> None:
    """Refuse a .beton that is unreadable or whose fields are not `FIELDS`."""
    from fastproto.data.ffcv_threads import import_ffcv

    import_ffcv()
    from ffcv.reader import Reader

    try:
        reader = Reader(str(beton))
    except Exception as err:  # FFCV raises whatever its header parsing hits
        raise ValueError(
            f"{beton} is not a readable .beton file ({type(err).__name__}); convert the data "
            "again with `data_prep` (ffcv format)"
        ) from err
    found = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
    if any(found.get(name) != kind for name, kind in FIELDS.items()):
        shown = ", ".join(f"{n} ({k})" for n, k in found.items()) or "none"
        raise ValueError(
            f"{beton} has the fields {shown}; fastproto reads image (RGBImageField) and label "
            "(IntField): convert the images with `data_prep` (ffcv format)"
        )
