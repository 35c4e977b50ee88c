"""Loading one case: decode the NIfTI files, check they agree, stack the modalities.

Every way a file can be bad (missing, truncated, not NIfTI, wrong shape or affine, NaN or
inf voxels, a modality zero everywhere, a segmentation that is not one 3-D volume of
integer labels inside the convention) raises a one-line :class:`InputError` naming it.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from swapseg.data.labels import check_labels
from swapseg.data.layouts import MODALITIES, Case
from swapseg.errors import InputError

__all__ = ["LoadedCase", "load_case", "read_header", "read_nifti"]

#: Two affines closer than this (in mm, per matrix entry) count as the same grid.
AFFINE_TOL = 1e-3

_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError,
                nib.filebasedimages.ImageFileError, MemoryError)


@dataclass
class LoadedCase:
    """One case in memory, on its original grid."""

    case_id: str
    #: float32 (4, X, Y, Z) in MODALITIES order.
    image: np.ndarray
    #: raw labels (X, Y, Z) as stored (int16 or uint8 in real data), or None.
    seg: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    #: voxel size in mm, per axis.
    spacing: tuple[float, float, float]
    convention: str


def read_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file without decoding its voxels (cheap)."""
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({_why(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def read_nifti(path: Path, dtype: type | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Decode a NIfTI file's voxels; a truncated or corrupt file raises InputError."""
    img = read_header(path)
    try:
        data = np.asanyarray(img.dataobj)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: truncated or corrupt NIfTI data ({_why(exc)})") from None
    return np.asarray(data), img


def _why(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def _check_finite(data: np.ndarray, path: Path) -> None:
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: {n} NaN or inf voxels")


def _check_same_grid(ref: nib.Nifti1Image, ref_path: Path, img: nib.Nifti1Image,
                     path: Path, shape: tuple[int, ...]) -> None:
    if tuple(img.shape[:3]) != shape:
        raise InputError(f"{path}: shape {tuple(img.shape)} differs from {ref_path.name} "
                         f"{tuple(ref.shape)}")
    if not np.allclose(img.affine, ref.affine, atol=AFFINE_TOL):
        raise InputError(f"{path}: affine differs from that of {ref_path.name}")


def _load_separate(case: Case) -> tuple[np.ndarray, nib.Nifti1Image, Path]:
    assert isinstance(case.images, dict)
    arrays = []
    ref: nib.Nifti1Image | None = None
    ref_path = case.images[MODALITIES[0]]
    for m in MODALITIES:
        path = case.images[m]
        data, img = read_nifti(path, np.float32)
        if data.ndim != 3:
            raise InputError(f"{path}: expected a 3-D volume, got shape {data.shape}")
        if ref is None:
            ref = img
        else:
            _check_same_grid(ref, ref_path, img, path, arrays[0].shape)
        _check_finite(data, path)
        if not data.any():
            raise InputError(f"{path}: modality {m} is zero everywhere")
        arrays.append(data)
    assert ref is not None
    return np.stack(arrays), ref, ref_path  # (4, X, Y, Z)


def _load_4d(case: Case) -> tuple[np.ndarray, nib.Nifti1Image, Path]:
    assert isinstance(case.images, Path) and case.channels is not None
    path = case.images
    data, img = read_nifti(path, np.float32)
    if data.ndim != 4 or data.shape[3] <= max(case.channels):
        raise InputError(f"{path}: expected a 4-D volume with {len(MODALITIES)} channels, "
                         f"got shape {data.shape}")
    _check_finite(data, path)
    image = np.stack([data[..., c] for c in case.channels])  # (4, X, Y, Z)
    for m, c, channel in zip(MODALITIES, case.channels, image, strict=True):
        if not channel.any():
            raise InputError(f"{path}: channel {c} (modality {m}) is zero everywhere")
    return image, img, path


def load_case(case: Case) -> LoadedCase:
    """Decode and check one case (see the module docstring for what is checked)."""
    if isinstance(case.images, dict):
        image, ref, ref_path = _load_separate(case)
    else:
        image, ref, ref_path = _load_4d(case)
    seg = None
    if case.seg is not None:
        seg, seg_img = read_nifti(case.seg)
        while seg.ndim > 3 and seg.shape[-1] == 1:  # (X, Y, Z, 1) is still one volume
            seg = seg[..., 0]
        if seg.ndim != 3:
            raise InputError(f"{case.seg}: shape {tuple(seg_img.shape)} holds more than one "
                             "volume; a segmentation is one 3-D label volume")
        _check_same_grid(ref, ref_path, seg_img, case.seg, image.shape[1:])
        check_labels(seg, case.convention, str(case.seg))
        if seg.dtype.kind == "f":
            seg = seg.astype(np.uint8)
    zooms = ref.header.get_zooms()[:3]
    return LoadedCase(case.case_id, image, seg, ref.affine.copy(), ref.header.copy(),
                      tuple(float(z) for z in zooms), case.convention)
