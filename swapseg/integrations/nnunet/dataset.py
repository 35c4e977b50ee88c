"""A BraTS-like synthetic dataset in nnU-Net v2's raw format (for tests and the README flow).

Cases come from swapseg's phantoms; labels follow nnU-Net's own BraTS conversion (edema 1,
necrotic/non-enhancing core 2, enhancing tumour 3) and train on the BraTS regions (whole
tumour, tumour core, enhancing tumour), as nnU-Net's BraTS datasets do.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from swapseg.data.synthetic import make_phantom
from swapseg.errors import InputError
from swapseg.io import atomic_path

__all__ = ["CHANNELS", "write_raw_dataset"]

#: nnU-Net channel order of BraTS (its Dataset137 conversion); phantoms are flair, t1, t1ce, t2.
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
_FROM_PHANTOM = (1, 2, 3, 0)
_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
           "enhancing tumor": 3}


def _save(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp))


def _nnunet_labels(seg: np.ndarray) -> np.ndarray:
    out = np.zeros_like(seg)
    out[seg == 2] = 1  # edema
    out[seg == 1] = 2  # necrosis / non-enhancing core
    out[seg == 4] = 3  # enhancing
    return out


def write_raw_dataset(raw_root: str | Path, dataset_id: int, n_cases: int,
                      shape: tuple[int, int, int], seed: int = 0) -> Path:
    """Write ``Dataset<ID>_SynthBraTS`` under ``raw_root``; returns its folder.

    The folder is built beside its final name and renamed into place, so an interrupted
    run leaves no half-written dataset.
    """
    if not 1 <= dataset_id <= 999:
        raise InputError(f"nnU-Net dataset IDs are 1..999, got {dataset_id}")
    if n_cases < 5:
        raise InputError(f"nnU-Net's 5-fold split needs at least 5 cases, got {n_cases}")
    final = Path(raw_root) / f"Dataset{dataset_id:03d}_SynthBraTS"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    for i in range(n_cases):
        images, seg = make_phantom(shape, np.random.default_rng([seed, i]))
        case = f"SynthBraTS_{i:03d}"
        for ch, m in enumerate(_FROM_PHANTOM):
            _save(images[m], tmp / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
        _save(_nnunet_labels(seg), tmp / "labelsTr" / f"{case}.nii.gz")
    meta = {"channel_names": CHANNELS, "labels": _LABELS, "regions_class_order": [1, 2, 3],
            "numTraining": n_cases, "file_ending": ".nii.gz",
            "name": "SynthBraTS", "description": "swapseg's BraTS-like phantoms"}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
