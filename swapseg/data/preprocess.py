"""Preprocessing a loaded case for the network, and putting predictions back.

Two ways in, one way back:

- :func:`preprocess` (training and validation) cuts a fixed window; see below.
- :func:`prepare_brain` (prediction) reads the four modalities only: the brain box is the
  bounding box of the nonzero image voxels, the whole box is kept (no voxel cut away), the
  image is z-scored and, with ``zoom > 1``, block-averaged as in training. Its grid is
  whatever size the brain is; the predictor pads it to the network's divisor.
- :func:`restore` maps an array on either grid back to the original one.

``preprocess`` crops to the brain, z-scores each modality over its nonzero voxels, and cuts
a window of ``target_shape * zoom`` voxels centred on the brain, zero-padded where it runs past
the volume; with ``zoom > 1`` it then averages ``zoom^3`` blocks of the image and takes the
centre voxel of each block of the labels. ``restore`` maps any ``(..., *target_shape)`` array
back to the original grid: nearest upsampling, un-crop, zeros outside the brain box.

When the brain box is larger than the window (a target too small for the head), the window
is kept on the tumor (a training-time sampling choice: it needs the labels, so prediction
never goes through it): the brain voxels cut away are counted, reported in ``PrepInfo`` and in
a warning; a tumor that does not fit raises :class:`InputError` rather than being cut.
"""

from __future__ import annotations

import base64
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import nibabel as nib
import numpy as np

from swapseg.data.layouts import MODALITIES
from swapseg.data.loader import LoadedCase
from swapseg.errors import InputError

__all__ = ["PrepInfo", "Preprocessed", "preprocess", "prepare_brain", "restore"]

Shape3 = tuple[int, int, int]


@dataclass
class PrepInfo:
    """Everything needed to map a preprocessed array back to the original image."""

    case_id: str
    convention: str
    #: (X, Y, Z) of the original grid.
    original_shape: Shape3
    target_shape: Shape3
    zoom: int
    #: original-grid index of the first voxel of the window (may be negative: padding).
    origin: Shape3
    #: brain bounding box in the original grid, [start, stop) per axis.
    bbox_start: Shape3
    bbox_stop: Shape3
    #: brain voxels outside the window (0 unless the target is too small for the head).
    cut_brain_voxels: int
    #: per-modality mean and std of the nonzero voxels, used for the z-score.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spacing: tuple[float, float, float]
    #: original 4x4 affine and the NIfTI header bytes (base64), for writing predictions.
    affine: list[list[float]]
    header_b64: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrepInfo:
        tup = {"original_shape", "target_shape", "origin", "bbox_start", "bbox_stop", "mean",
               "std", "spacing"}
        return cls(**{k: tuple(v) if k in tup else v for k, v in d.items()})

    def header(self) -> nib.Nifti1Header:
        """The original NIfTI header."""
        return nib.Nifti1Header(base64.b64decode(self.header_b64))

    def nifti(self, volume: np.ndarray, dtype: Any = np.uint8) -> nib.Nifti1Image:
        """A NIfTI image of an original-grid ``volume`` with the original affine and header."""
        if tuple(volume.shape[-3:]) != tuple(self.original_shape):
            raise ValueError(f"volume shape {volume.shape} is not the original grid "
                             f"{self.original_shape}; call restore() first")
        hdr = self.header()
        hdr.set_data_dtype(dtype)
        img = nib.Nifti1Image(np.asarray(volume, dtype=dtype), np.asarray(self.affine), hdr)
        img.header.set_slope_inter(1, 0)
        return img


@dataclass
class Preprocessed:
    """A case ready for the network."""

    #: float32 (4, *target_shape), z-scored, background 0.
    image: np.ndarray
    #: raw labels (*target_shape) or None.
    seg: np.ndarray | None
    info: PrepInfo


def _as_shape3(value: int | tuple[int, ...] | list[int], what: str) -> Shape3:
    t = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(t) != 3 or min(t) < 1:
        raise InputError(f"{what} must be 3 positive integers, got {value!r}")
    return t  # type: ignore[return-value]


def _bbox(mask: np.ndarray) -> tuple[Shape3, Shape3]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
           for ax in range(3)]
    return (tuple(int(i[0]) for i in idx), tuple(int(i[-1]) + 1 for i in idx))  # type: ignore


def _window_origin(loaded: LoadedCase, start: Shape3, stop: Shape3,
                   window: Shape3) -> list[int]:
    """Start of a window of size ``window``: centred on the brain, kept on the tumor."""
    origin = [s - (w - (e - s)) // 2 for s, e, w in zip(start, stop, window, strict=True)]
    if all(e - s <= w for s, e, w in zip(start, stop, window, strict=True)) or loaded.seg is None:
        return origin
    t_start, t_stop = _bbox(loaded.seg != 0) if np.any(loaded.seg) else (start, start)
    for ax in range(3):
        if t_stop[ax] - t_start[ax] > window[ax]:
            raise InputError(f"case {loaded.case_id}: tumor spans {t_stop[ax] - t_start[ax]} "
                             f"voxels on axis {ax}, more than the window of {window[ax]}; "
                             f"use a larger target shape or zoom")
        origin[ax] = min(max(origin[ax], t_stop[ax] - window[ax]), t_start[ax])
    return origin


def _cut(volume: np.ndarray, origin: list[int], window: Shape3) -> np.ndarray:
    """The window of ``volume`` (..., X, Y, Z) starting at ``origin``, zero-padded."""
    out = np.zeros(volume.shape[:-3] + tuple(window), dtype=volume.dtype)
    src, dst = [], []
    for o, w, n in zip(origin, window, volume.shape[-3:], strict=True):
        lo, hi = max(o, 0), min(o + w, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - o, lo - o + max(hi - lo, 0)))
    out[(..., *dst)] = volume[(..., *src)]
    return out


def _zscore(image: np.ndarray, case_id: str) -> tuple[list[float], list[float]]:
    """Z-score each channel of ``image`` in place over its nonzero voxels."""
    means, stds = [], []
    for c in range(image.shape[0]):
        nz = image[c] != 0
        vals = image[c][nz].astype(np.float64)
        if vals.size == 0:
            raise InputError(f"case {case_id}: modality {MODALITIES[c]} is zero everywhere")
        mean, std = float(vals.mean()), float(vals.std())
        std = std if std > 0 else 1.0
        image[c][nz] = ((vals - mean) / std).astype(np.float32)
        means.append(mean)
        stds.append(std)
    return means, stds


def _header_b64(header: nib.Nifti1Header) -> str:
    """The header as base64 NIfTI-1 bytes (a NIfTI-2 header is converted)."""
    if not isinstance(header, nib.Nifti1Header) or isinstance(header, nib.Nifti2Header):
        header = nib.Nifti1Header.from_header(header, check=False)
        header["sizeof_hdr"] = 348
    return base64.b64encode(header.binaryblock).decode("ascii")


def preprocess(loaded: LoadedCase, target_shape: int | tuple[int, ...],
               zoom: int = 1) -> Preprocessed:
    """Crop, z-score, window and (optionally) downsample one case; see the module docstring."""
    target = _as_shape3(target_shape, "target shape")
    if not isinstance(zoom, (int, np.integer)) or zoom < 1:
        raise InputError(f"zoom must be a positive integer, got {zoom!r}")
    zoom = int(zoom)
    mask = np.any(loaded.image != 0, axis=0)
    if loaded.seg is not None:
        mask |= loaded.seg != 0  # a label outside the brain must survive the round trip
    if not mask.any():
        raise InputError(f"case {loaded.case_id}: every voxel is zero")
    start, stop = _bbox(mask)
    window: Shape3 = tuple(t * zoom for t in target)  # type: ignore[assignment]
    origin = _window_origin(loaded, start, stop, window)
    image = _cut(loaded.image, origin, window)  # (4, *window)
    cut = int(mask.sum() - _cut(mask, origin, window).sum())
    if cut:
        size = [e - s for s, e in zip(start, stop, strict=True)]
        warnings.warn(f"case {loaded.case_id}: the brain ({size} voxels) does not fit the "
                      f"window {list(window)}; {cut} brain voxels cut away (tumor kept)",
                      stacklevel=2)
    means, stds = _zscore(image, loaded.case_id)
    seg = _cut(loaded.seg, origin, window) if loaded.seg is not None else None
    if zoom > 1:
        c = image.shape[0]
        image = image.reshape(c, target[0], zoom, target[1], zoom, target[2], zoom) \
            .mean(axis=(2, 4, 6), dtype=np.float32)  # (4, *target)
        if seg is not None:
            h = zoom // 2
            seg = np.ascontiguousarray(seg[h::zoom, h::zoom, h::zoom])
    info = PrepInfo(
        loaded.case_id, loaded.convention, tuple(loaded.image.shape[1:]), target, zoom,
        tuple(origin), start, stop, cut, tuple(means), tuple(stds), loaded.spacing,
        np.asarray(loaded.affine, dtype=float).tolist(),
        _header_b64(loaded.header))
    return Preprocessed(np.ascontiguousarray(image, dtype=np.float32), seg, info)


def prepare_brain(loaded: LoadedCase, zoom: int = 1) -> Preprocessed:
    """The whole brain box of one case, label-blind; see the module docstring.

    ``loaded.seg`` is never read. The grid is ``ceil(box / zoom)`` per axis; the far end of
    an axis whose box is not a multiple of ``zoom`` is zero-padded.
    """
    if not isinstance(zoom, (int, np.integer)) or zoom < 1:
        raise InputError(f"zoom must be a positive integer, got {zoom!r}")
    zoom = int(zoom)
    mask = np.any(loaded.image != 0, axis=0)  # the image alone decides the box
    if not mask.any():
        raise InputError(f"case {loaded.case_id}: every voxel is zero")
    start, stop = _bbox(mask)
    grid: Shape3 = tuple(-(-(e - s) // zoom)  # type: ignore[assignment]
                         for s, e in zip(start, stop, strict=True))
    window: Shape3 = tuple(g * zoom for g in grid)  # type: ignore[assignment]
    image = _cut(loaded.image, list(start), window)  # (4, *window)
    means, stds = _zscore(image, loaded.case_id)
    if zoom > 1:
        image = image.reshape(image.shape[0], grid[0], zoom, grid[1], zoom, grid[2], zoom) \
            .mean(axis=(2, 4, 6), dtype=np.float32)  # (4, *grid)
    info = PrepInfo(
        loaded.case_id, loaded.convention, tuple(loaded.image.shape[1:]), grid, zoom,
        start, start, stop, 0, tuple(means), tuple(stds), loaded.spacing,
        np.asarray(loaded.affine, dtype=float).tolist(), _header_b64(loaded.header))
    return Preprocessed(np.ascontiguousarray(image, dtype=np.float32), None, info)


def restore(array: np.ndarray, info: PrepInfo) -> np.ndarray:
    """Map ``(..., *target_shape)`` back to ``(..., *original_shape)``; zeros outside the brain box.

    Works for labels, region masks and probabilities alike (nearest upsampling).
    """
    array = np.asarray(array)
    if tuple(array.shape[-3:]) != tuple(info.target_shape):
        raise InputError(f"array shape {array.shape} does not end in the target shape "
                         f"{tuple(info.target_shape)} of case {info.case_id}")
    z = info.zoom
    if z > 1:
        for ax in (-3, -2, -1):
            array = np.repeat(array, z, axis=ax)  # (..., *window)
    out = np.zeros(array.shape[:-3] + tuple(info.original_shape), dtype=array.dtype)
    # the overlap of window and original grid, clipped to the brain box
    src, dst = [], []
    for o, w, s, e in zip(info.origin, array.shape[-3:], info.bbox_start, info.bbox_stop,
                          strict=True):
        lo, hi = max(o, s), min(o + w, e)
        dst.append(slice(lo, max(hi, lo)))
        src.append(slice(lo - o, lo - o + max(hi - lo, 0)))
    out[(..., *dst)] = array[(..., *src)]
    return out
