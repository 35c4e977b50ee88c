"""Helpers writing tiny NIfTI volumes (imported by conftest and the data tests)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (19, 21, 23)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SUFFIX_2017 = {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"}
SUFFIX_2023 = {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"}


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def tiny_volumes(seed: int, shape=SHAPE, labels=(1, 2, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Four int16 modalities (4, *shape) that differ per channel, and a tumor seg."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.int16)
    brain = (slice(3, shape[0] - 3), slice(2, shape[1] - 4), slice(4, shape[2] - 2))
    for c in range(4):
        image[(c, *brain)] = rng.integers(100 * (c + 1), 100 * (c + 1) + 50,
                                          image[(c, *brain)].shape)
    seg = np.zeros(shape, np.uint8)
    seg[6:10, 6:10, 8:12] = labels[1]
    seg[7:9, 7:9, 9:11] = labels[0]
    seg[8, 8, 10] = labels[2]
    return image, seg


