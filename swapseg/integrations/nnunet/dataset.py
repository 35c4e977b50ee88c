"""A BraTS-like synthetic dataset in nnU-Net v2's raw format (for tests and the README flow).

Cases come from swapseg's phantoms; labels follow nnU-Net's own BraTS conversion (edema 1,
necrotic/non-enhancing core 2, enhancing tumour 3) and train on the BraTS regions (whole
tumour, tumour core, enhancing tumour), as nnU-Net's BraTS datasets do.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from swapseg.data.synthetic import make_phantom
from swapseg.errors import InputError
from swapseg.io import atomic_path

__all__ = ["CHANNELS", "write_raw_dataset", "convert_brats"]

#: nnU-Net channel order of BraTS (its Dataset137 conversion); phantoms are flair, t1, t1ce, t2.
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
_FROM_PHANTOM = (1, 2, 3, 0)
_BRATS_MODS = ("t1", "t1ce", "t2", "flair")  # in CHANNELS' order
_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
           "enhancing tumor": 3}


def _save(array: np.ndarray, path: Path, spacing: float = 1.0) -> None:
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, np.diag([spacing] * 3 + [1.0])), str(tmp))


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


def _coarse_case(case: Path, factor: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The four modalities and the labels of a BraTS case folder, cropped to the brain and
    coarsened ``factor`` times per axis (images: block means; labels: block centres)."""
    try:
        images = [np.asarray(nib.load(str(case / f"{case.name}_{m}.nii.gz")).dataobj,
                             np.float32) for m in _BRATS_MODS]
        seg = np.asarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj, np.uint8)
    except FileNotFoundError as exc:
        raise InputError(f"{exc.filename}: missing (a BraTS case folder has "
                         f"<case>_{{{','.join(_BRATS_MODS)},seg}}.nii.gz)") from None
    idx = np.nonzero(np.any([i != 0 for i in images], axis=0))
    if not idx[0].size:
        raise InputError(f"{case}: every modality is zero")
    box = tuple(slice(a.min(), a.min() + (a.max() - a.min() + 1) // factor * factor)
                for a in idx)

    def blocks(a: np.ndarray) -> np.ndarray:
        d, h, w = (x // factor for x in a.shape)
        return a.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5))
    half = factor // 2
    return [blocks(i[box]) for i in images], \
        _nnunet_labels(seg[box][half::factor, half::factor, half::factor])


def convert_brats(cases: Sequence[Path], raw_root: str | Path, dataset_id: int, factor: int,
                  test_cases: Sequence[Path] = ()) -> Path:
    """Real BraTS case folders as ``Dataset<ID>_BraTSCoarse`` the way nnU-Net's BraTS
    conversion writes them (channels T1, T1ce, T2, Flair; labels edema 1, core 2,
    enhancing 3; trained as the BraTS regions), each ``factor`` times coarser (spacing
    ``factor`` mm); ``test_cases`` go to imagesTs. Built beside its name and renamed in."""
    if len(cases) < 5:
        raise InputError(f"nnU-Net's 5-fold split needs at least 5 cases, got {len(cases)}")
    if factor < 1:
        raise InputError(f"the coarsening factor must be at least 1, got {factor}")
    final = Path(raw_root) / f"Dataset{dataset_id:03d}_BraTSCoarse"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir(parents=True)
    for split, group in (("Tr", cases), ("Ts", list(test_cases))):
        for case in group:
            images, seg = _coarse_case(Path(case), factor)
            for ch, img in enumerate(images):
                _save(img, tmp / f"images{split}" / f"{Path(case).name}_{ch:04d}.nii.gz",
                      factor)
            _save(seg, tmp / f"labels{split}" / f"{Path(case).name}.nii.gz", factor)
    meta = {"channel_names": CHANNELS, "labels": _LABELS, "regions_class_order": [1, 2, 3],
            "numTraining": len(cases), "file_ending": ".nii.gz", "name": "BraTSCoarse",
            "description": f"BraTS 2018 cases, {factor}x coarser"}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
