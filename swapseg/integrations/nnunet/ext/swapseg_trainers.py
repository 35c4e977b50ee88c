"""Imported by nnU-Net's trainer lookup as a top-level module of ``nnUNet_extTrainer``."""

from swapseg.integrations.nnunet.trainer import (
    nnUNetTrainerSwap,
    nnUNetTrainerSwap_debug,
    nnUNetTrainerSwapFullImage,
)

__all__ = ["nnUNetTrainerSwap", "nnUNetTrainerSwapFullImage", "nnUNetTrainerSwap_debug"]
