"""Segmentation networks, and a registry that builds any model by name or import spec."""

from swapseg.models.registry import DEFAULT_MODEL, MODELS, build_model
from swapseg.models.unet3d import Isensee3DUNet

__all__ = ["Isensee3DUNet", "build_model", "MODELS", "DEFAULT_MODEL"]
