"""fastproto: DINO and iBOT in von Mises-Fisher form with KoLeo-proto, at large K."""

__version__ = "0.1.0"
