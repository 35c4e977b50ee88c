"""Figure helpers for the domain's plots: the same two as the engine's (one place)."""

from swapseg.offload.figure import pyplot, save_png

__all__ = ["pyplot", "save_png"]
