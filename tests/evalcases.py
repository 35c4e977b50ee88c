"""Tiny BraTS-layout datasets and checkpoints for the evaluation and prediction tests (a
helper module with a unique name, so that it cannot shadow another test folder's conftest)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from swapseg.models.unet3d import Isensee3DUNet

#: an oblique, anisotropic affine: predictions must carry it through unchanged
AFFINE = np.array([[-1.2, 0.1, 0.0, 90.0], [0.0, 1.1, 0.05, -126.0],
                   [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]])
TINY_MODEL = {"base_filters": 4, "depth": 3, "dropout": 0.0}


def write_cases(root: Path, n: int, shape: tuple[int, int, int] = (23, 19, 17),
                seed: int = 0) -> list[str]:
    """``n`` cases ``<root>/<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz``: a head with a tumor."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ids = []
    for i in range(n):
        cid = f"Case_{i:03d}"
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
        r = np.linalg.norm(grid - centre, axis=-1)
        head = r < min(shape) / 2 - 1
        seg = np.zeros(shape, np.uint8)
        seg[r < 5] = 2
        seg[r < 3.5] = 1
        seg[r < 2] = 4
        (root / cid).mkdir(parents=True)
        for k, mod in enumerate(("flair", "t1", "t1ce", "t2")):
            img = (head * (100 + 10 * k) + (seg > 0) * 80 * (k + 1)
                   + rng.normal(0, 5, shape) * head).astype(np.int16)
            nib.save(nib.Nifti1Image(img, AFFINE), root / cid / f"{cid}_{mod}.nii.gz")
        nib.save(nib.Nifti1Image(seg, AFFINE), root / cid / f"{cid}_seg.nii.gz")
        ids.append(cid)
    return ids


def save_checkpoint(path: Path, model: torch.nn.Module, shape=(16, 16, 16), zoom=1,
                    nested: bool = False) -> Path:
    """The checkpoint format of ``swapseg train``: ``{"model": state, "config": {...}}``."""
    config = {"shape": list(shape), "zoom": zoom, "mode": "full"}
    if nested:
        config["model"] = dict(TINY_MODEL)
    else:
        config.update(TINY_MODEL)
    torch.save({"model": model.state_dict(), "config": config, "epoch": 3}, path)
    return path


def tiny_model() -> Isensee3DUNet:
    return Isensee3DUNet(**TINY_MODEL)


def constant_model(logits: tuple[float, float, float]) -> Isensee3DUNet:
    """A tiny U-Net whose heads ignore their input: every voxel gets the same region logits."""
    model = tiny_model()
    with torch.no_grad():
        for head in model.heads:
            head.weight.zero_()
            head.bias.copy_(torch.tensor(logits))
    return model
