"""nnU-Net v2 integration: trainers that swap (needs ``pip install 'swapseg[nnunet]'``).

    export nnUNet_extTrainer=$(swapseg nnunet trainers)
    nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerSwap

Importing this package imports nnunetv2; ``trainers_folder()`` does not.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TRAINER_NAMES", "trainers_folder"]

#: The trainers nnU-Net finds through ``nnUNet_extTrainer``.
TRAINER_NAMES = ("nnUNetTrainerSwap", "nnUNetTrainerSwapFullImage", "nnUNetTrainerSwap_debug")


def trainers_folder() -> Path:
    """The folder to put in ``nnUNet_extTrainer``: one module re-exporting the trainers."""
    return Path(__file__).resolve().parent / "ext"
