"""nnU-Net's predictor where torchvision cannot load (a CPU-only torch).

``nnUNetPredictor.initialize_from_trained_model_folder`` finds the checkpoint's trainer
class by importing every trainer module under nnunetv2, and one of them needs torchvision.
``predict`` resolves swapseg's trainers directly (nnU-Net's own through its lookup) and
otherwise runs nnU-Net's predictor unchanged: the patch, the sliding window, the
resampling and the export are the plans' and nnU-Net's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir
from nnunetv2.inference import predict_from_raw_data
from nnunetv2.utilities.file_path_utilities import get_output_folder

from swapseg.errors import InputError

__all__ = ["model_folder", "predict"]


def model_folder(dataset: str | int, trainer: str, plans: str, configuration: str) -> str:
    """``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION``, which must exist."""
    folder = get_output_folder(dataset, trainer, plans, configuration)
    if not isdir(folder):
        raise InputError(f"{folder}: no trained model (train it with swapseg nnunet train)")
    return folder


def predict(input_folder: str, output_folder: str, folder: str, folds: Sequence[int | str],
            trainer_class: Callable[[str], type], device: torch.device,
            checkpoint: str = "checkpoint_final.pth", step_size: float = 0.5,
            mirroring: bool = True) -> None:
    """nnU-Net's predictor over ``input_folder`` (nnU-Net's raw image naming), one
    process each for preprocessing and export."""
    # the one lookup that would import torchvision: resolved by the caller instead
    predict_from_raw_data.recursive_find_trainer_class_by_name = trainer_class
    predictor = predict_from_raw_data.nnUNetPredictor(
        tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
        perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
        verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, tuple(folds), checkpoint)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)
