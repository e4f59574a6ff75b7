"""Losses: DINO's [CLS] multi-crop loss, iBOT's masked-patch loss, KoLeo regularisers."""

from fastproto.losses.dino import dino_loss, dino_pairing
from fastproto.losses.ibot import ibot_patch_loss
from fastproto.losses.koleo import koleo_data, koleo_proto

__all__ = ["dino_loss", "dino_pairing", "ibot_patch_loss", "koleo_data", "koleo_proto"]
