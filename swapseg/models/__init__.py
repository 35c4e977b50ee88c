"""Segmentation networks."""

from swapseg.models.unet3d import Isensee3DUNet

__all__ = ["Isensee3DUNet"]
