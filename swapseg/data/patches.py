"""Random patches of preprocessed volumes, for patch-mode training.

Each volume yields ``per_volume`` patches per epoch. A patch is uniform over all positions
where it fits, except that with probability ``tumor_fraction`` it is centred (as far as the
volume allows) on a random tumor voxel, to oversample the rare foreground. The generator is
per process, seeded like :class:`~swapseg.data.dataset.BratsVolumes` augmentation.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from swapseg.data.dataset import BratsVolumes
from swapseg.errors import InputError

__all__ = ["BratsPatches", "patch_origin"]


def patch_origin(shape: tuple[int, ...], patch: tuple[int, int, int], rng: np.random.Generator,
                 tumor: np.ndarray | None = None) -> tuple[int, int, int]:
    """Start of one patch in a volume of spatial ``shape``.

    ``tumor`` is an (N, 3) array of tumor voxel indices; when given and non-empty, the patch
    is centred on one of them, shifted to stay inside the volume.
    """
    high = [s - p for s, p in zip(shape, patch, strict=True)]
    if tumor is not None and len(tumor):
        centre = tumor[int(rng.integers(len(tumor)))]
        start = [int(c) - p // 2 for c, p in zip(centre, patch, strict=True)]
        return tuple(min(max(s, 0), h) for s, h in zip(start, high, strict=True))  # type: ignore
    return tuple(int(rng.integers(h + 1)) for h in high)  # type: ignore[return-value]


class BratsPatches(Dataset):
    """Patches of a :class:`BratsVolumes`; item = ``{"image", "target", "case_id"}``.

    Augmentation, if enabled on ``volumes``, is applied to the whole volume before cutting.
    """

    def __init__(self, volumes: BratsVolumes, patch: int | tuple[int, int, int],
                 per_volume: int = 1, tumor_fraction: float = 0.0, seed: int = 0) -> None:
        p = (patch,) * 3 if isinstance(patch, int) else tuple(int(v) for v in patch)
        if len(p) != 3 or min(p) < 1:
            raise InputError(f"patch must be 3 positive sizes, got {patch!r}")
        if any(a > b for a, b in zip(p, volumes.target_shape, strict=True)):
            raise InputError(f"patch {p} is larger than the volumes {volumes.target_shape}")
        if per_volume < 1:
            raise InputError(f"per_volume must be at least 1, got {per_volume}")
        if not 0.0 <= tumor_fraction <= 1.0:
            raise InputError(f"tumor_fraction must be in [0, 1], got {tumor_fraction}")
        self.volumes = volumes
        self.patch: tuple[int, int, int] = p  # type: ignore[assignment]
        self.per_volume = per_volume
        self.tumor_fraction = tumor_fraction
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.volumes) * self.per_volume

    def rng(self) -> np.random.Generator:
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, 1, key[1] % 2**63])
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.volumes[index // self.per_volume]
        image, target = item["image"], item["target"]  # (4, D, H, W), (3, D, H, W)
        rng = self.rng()
        tumor = None
        if self.tumor_fraction > 0 and rng.random() < self.tumor_fraction:
            tumor = torch.nonzero(target[0] > 0).numpy()  # (N, 3) WT voxels
        o = patch_origin(tuple(image.shape[1:]), self.patch, rng, tumor)
        sl = tuple(slice(s, s + p) for s, p in zip(o, self.patch, strict=True))
        return {"image": image[(slice(None), *sl)].contiguous(),
                "target": target[(slice(None), *sl)].contiguous(),
                "case_id": item["case_id"]}
