"""Losses: DINO's [CLS] multi-crop loss, iBOT's masked-patch loss, KoLeo regularisers."""

from fastproto.losses.dino import dino_loss, dino_loss_with_raw_means, dino_pairing
from fastproto.losses.ibot import ibot_patch_loss, ibot_patch_loss_with_raw_means

__all__ = [
    "dino_loss",
    "dino_loss_with_raw_means",
    "dino_pairing",
    "ibot_patch_loss",
    "ibot_patch_loss_with_raw_means",
]

try:  # koleo.py lands separately; the package must import without it.
    from fastproto.losses.koleo import koleo_data, koleo_proto
except ImportError:  # pragma: no cover - only before koleo.py exists
    pass
else:
    __all__ += ["koleo_data", "koleo_proto"]
