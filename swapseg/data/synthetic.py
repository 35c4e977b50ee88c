"""BraTS-like synthetic phantoms, written in the BraTS 2018 layout (the embedded default data).

Each case is a skull-stripped head: an irregular brain with white matter, a folded grey-matter
ribbon, sulcal and ventricular CSF and deep grey nuclei; and a glioma with the three BraTS
sub-regions: edema spreading along white matter (label 2), an enhancing rim with gaps (label
4) and a necrotic or non-enhancing core (label 1). Sizes, places, shapes and the presence of a
necrotic core vary from case to case; many tumors are wider than half the volume's side.

The four modalities follow the real contrasts: edema bright on FLAIR and T2, CSF dark on FLAIR
and bright on T2, the rim bright on T1ce, the core dark on T1ce. Images carry partial-volume
blur, a smooth bias field, tissue texture and Rician noise, and are stored as int16 at a
random per-case scale (real scanners differ), segmentations as uint8, like the real release.
Everything is drawn from ``numpy.random.default_rng([seed, case_index])``: deterministic.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from swapseg.errors import InputError
from swapseg.io import atomic_path

__all__ = ["TISSUE_CONTRAST", "make_phantom", "synthesize"]

_TISSUES = ("background", "wm", "gm", "csf", "edema", "necrosis", "enhancing")
#: Mean intensity of each tissue per modality, relative to white matter on T1.
TISSUE_CONTRAST = {  # wm, gm, csf, edema, necrosis, enhancing
    "flair": (0.70, 0.85, 0.22, 1.70, 0.95, 1.15),
    "t1": (1.00, 0.72, 0.28, 0.62, 0.42, 0.70),
    "t1ce": (1.00, 0.86, 0.35, 0.70, 0.40, 1.65),
    "t2": (0.55, 0.80, 1.65, 1.30, 1.45, 1.00),
}
_MODS = ("flair", "t1", "t1ce", "t2")
_VESSEL_GAIN = {"flair": 1.0, "t1": 0.9, "t1ce": 1.8, "t2": 0.8}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to zero mean and unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma,
                                    mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _grid(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Voxel-centre coordinates in [-1, 1] along each axis.

    Scaling each axis to its own length keeps the whole head inside a non-cubic volume (as
    in the real 240 x 240 x 155 grid, where the head is flatter along z).
    """
    return list(np.meshgrid(*[(np.arange(s) - (s - 1) / 2) / (s / 2) for s in shape],
                            indexing="ij", sparse=True))


def _ellipsoid(xyz: list[np.ndarray], centre, axes) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside."""
    return np.sqrt(sum(((x - c) / a) ** 2 for x, c, a in zip(xyz, centre, axes, strict=True)))


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int],
             xyz: list[np.ndarray]) -> np.ndarray:
    """Tissue index map (0 background, 1 WM, 2 GM, 3 CSF) of a brain."""
    s = max(shape)
    axes = np.array([0.70, 0.86, 0.80]) * rng.uniform(0.92, 1.05, 3)
    r = _ellipsoid(xyz, rng.uniform(-0.03, 0.03, 3), axes)
    r = r + 0.05 * _smooth_noise(rng, shape, s / 12)
    tissue = np.zeros(shape, np.uint8)
    brain = r < 1.0
    tissue[brain] = 1
    depth = 1.0 - r  # 0 at the brain surface, about 1 at the centre
    # gyri: a grey ribbon of varying thickness; sulci: the zero sheets of a smooth field,
    # which fold like real sulci, filled with CSF down to a varying depth
    tissue[brain & (depth < 0.15 + 0.07 * _smooth_noise(rng, shape, s / 20))] = 2
    folds = _smooth_noise(rng, shape, s / 28)
    sulci = (np.abs(folds) < 0.14) & (depth < 0.2 + 0.08 * _smooth_noise(rng, shape, s / 16))
    tissue[brain & (sulci | (depth < 0.02))] = 3
    for side in (-1, 1):  # deep grey nuclei and lateral ventricles
        nuc = _ellipsoid(xyz, (0.22 * side, 0.02, -0.05), (0.12, 0.16, 0.12))
        tissue[brain & (nuc < 1)] = 2
        ven = _ellipsoid(xyz, (0.09 * side, 0.0, 0.12), (0.06, 0.32, 0.10))
        tissue[brain & (ven + 0.15 * folds < 1)] = 3
    return tissue


def _tumor(rng: np.random.Generator, shape: tuple[int, int, int], xyz: list[np.ndarray],
           tissue: np.ndarray) -> np.ndarray:
    """BraTS labels (0, 1 core, 2 edema, 4 enhancing) of one glioma inside the brain."""
    s = max(shape)
    brain = tissue > 0
    centre = np.array([rng.choice([-1, 1]) * rng.uniform(0.15, 0.42),
                       rng.uniform(-0.45, 0.45), rng.uniform(-0.35, 0.4)])
    r_ed = rng.uniform(0.32, 0.7)
    aniso = rng.uniform(0.75, 1.25, 3)
    d_ed = _ellipsoid(xyz, centre, r_ed * aniso) + 0.22 * _smooth_noise(rng, shape, s / 14)
    d_ed -= 0.15 * (tissue == 1)  # edema spreads along white matter
    edema = brain & (d_ed < 1) & (tissue != 3)
    r_tc = r_ed * rng.uniform(0.5, 0.8)
    core_c = centre + rng.uniform(-0.3, 0.3, 3) * (r_ed - r_tc)
    d_tc = _ellipsoid(xyz, core_c, r_tc * rng.uniform(0.8, 1.2, 3))
    d_tc = d_tc + 0.18 * _smooth_noise(rng, shape, s / 18)
    core = brain & (d_tc < 1)
    # rim thickness: 0.08-0.13 of the half side, and at least 2 voxels so that low-resolution
    # copies keep it
    rim = max(rng.uniform(0.08, 0.13), 4.0 / s) / r_tc
    gaps = _smooth_noise(rng, shape, s / 20) > rng.uniform(0.6, 1.6)
    enhancing = core & (d_tc > 1 - rim) & ~gaps
    if rng.random() < 0.25:  # lower-grade look: patchy, thin enhancement
        enhancing &= _smooth_noise(rng, shape, s / 16) > 0.8
    labels = np.zeros(shape, np.uint8)
    labels[edema | core] = 2
    labels[core] = 1
    labels[enhancing] = 4
    return labels


def _vessels(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """Thin tubes (vessels, choroid plexus) that enhance on T1ce outside the tumor."""
    s = max(tissue.shape)
    a, b = _smooth_noise(rng, tissue.shape, s / 24), _smooth_noise(rng, tissue.shape, s / 24)
    return (np.abs(a) < 0.08) & (np.abs(b) < 0.25) & (tissue > 0)


def _render(rng: np.random.Generator, tissue: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Four int16 modalities (4, X, Y, Z) from tissue and tumor maps."""
    shape = tissue.shape
    s = max(shape)
    # one class map: 1 WM, 2 GM, 3 CSF, 4 edema, 5 necrosis/core, 6 enhancing
    cls = tissue.astype(np.int64)
    cls[labels == 2], cls[labels == 1], cls[labels == 4] = 4, 5, 6
    brain = tissue > 0
    vessels = _vessels(rng, tissue) & (labels == 0)
    # each acquisition has its own texture and bias field, partly shared (same head)
    texture = _smooth_noise(rng, shape, 1.2)
    bias = _smooth_noise(rng, shape, s / 4)
    scale = rng.uniform(300, 1500)
    weight = ndimage.gaussian_filter(brain.astype(np.float64), 0.6)
    out = np.zeros((4, *shape), np.int16)
    for m, mod in enumerate(_MODS):
        table = np.array((0.0, *TISSUE_CONTRAST[mod])) * rng.uniform(0.93, 1.07, 7)
        own = _smooth_noise(rng, shape, 1.2)
        img = table[cls] * (1 + 0.04 * texture + 0.05 * own)
        img[vessels] *= _VESSEL_GAIN[mod]
        # partial volume, blurring inside the brain only (no dark rim at its edge)
        img = ndimage.gaussian_filter(img, 0.6) / np.maximum(weight, 1e-3)
        img *= np.exp(0.05 * bias + 0.06 * _smooth_noise(rng, shape, s / 4))
        sigma = 0.03 * rng.uniform(0.8, 1.3)
        img = np.hypot(img + sigma * rng.standard_normal(shape),
                       sigma * rng.standard_normal(shape))  # Rician magnitude noise
        out[m] = np.where(brain, np.clip(img * scale, 1, 32767), 0).astype(np.int16)
    return out


def make_phantom(shape: int | tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: int16 images (4, X, Y, Z) in (flair, t1, t1ce, t2) order, uint8 labels."""
    shape3 = (shape,) * 3 if isinstance(shape, int) else tuple(int(v) for v in shape)
    if len(shape3) != 3 or min(shape3) < 16:
        raise InputError(f"synthetic shape must be 3 sizes of at least 16, got {shape!r}")
    xyz = _grid(shape3)  # type: ignore[arg-type]
    tissue = _anatomy(rng, shape3, xyz)  # type: ignore[arg-type]
    labels = _tumor(rng, shape3, xyz, tissue)  # type: ignore[arg-type]
    return _render(rng, tissue, labels), labels


def _affine(shape: tuple[int, ...]) -> np.ndarray:
    """LPS-style affine like the real release, at a voxel size giving a 240 mm field."""
    mm = 240.0 / max(shape)
    return np.array([[-mm, 0, 0, 0], [0, -mm, 0, (shape[1] - 1) * mm], [0, 0, mm, 0],
                     [0, 0, 0, 1]])


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def synthesize(out_dir: str | Path, n_cases: int, shape: int | tuple[int, int, int],
               seed: int = 0) -> list[Path]:
    """Write ``n_cases`` phantoms as ``<out_dir>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``.

    Each case is written to a hidden folder and renamed into place, so an interrupted run
    leaves no half-written case; an existing case of the same name is replaced.
    Returns the case folders.
    """
    if n_cases < 1:
        raise InputError(f"number of cases must be at least 1, got {n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        images, labels = make_phantom(shape, rng)
        case = f"Synth_{seed}_{i:03d}"
        tmp = out / f".{case}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        affine = _affine(labels.shape)
        for m, mod in enumerate(_MODS):
            _save(images[m], affine, tmp / f"{case}_{mod}.nii.gz")
        _save(labels, affine, tmp / f"{case}_seg.nii.gz")
        final = out / case
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        paths.append(final)
    return paths
