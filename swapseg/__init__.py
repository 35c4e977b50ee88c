"""swapseg: whole-volume 3D segmentation training with activation swapping and planning."""

__version__ = "0.1.0"

__all__ = ["__version__"]
