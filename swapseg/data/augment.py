"""Spatial augmentation: random flips of each axis and permutations of equal-length axes.

For a cubic volume these are the 48 symmetries of the cube. Image and target get the same
transform; both are ``(C, X, Y, Z)`` numpy arrays. Run inside DataLoader workers with a
per-worker generator (see :class:`swapseg.data.dataset.BratsVolumes`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_flip_permute", "spatial_permutations"]


def spatial_permutations(shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Every permutation of the three spatial axes that keeps ``shape`` unchanged."""
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    return [p for p in perms if tuple(shape[i] for i in p) == tuple(shape)]


def random_flip_permute(image: np.ndarray, target: np.ndarray | None,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip each spatial axis with probability 1/2, then permute equal-length axes at random.

    ``image`` is (C, X, Y, Z); ``target`` is (K, X, Y, Z) or None. Returns contiguous copies.
    """
    spatial = tuple(image.shape[-3:])
    flips = rng.random(3) < 0.5
    perms = spatial_permutations(spatial)  # type: ignore[arg-type]
    perm = perms[int(rng.integers(len(perms)))]

    def apply(a: np.ndarray) -> np.ndarray:
        axes = tuple(1 + i for i in range(3) if flips[i])
        if axes:
            a = np.flip(a, axis=axes)
        a = np.transpose(a, (0, *(1 + p for p in perm)))
        return np.ascontiguousarray(a)

    return apply(image), (apply(target) if target is not None else None)
