from __future__ import annotations

import numpy as np

from swapseg.data.augment import random_flip_permute, spatial_permutations


def test_spatial_permutations():
    assert len(spatial_permutations((4, 4, 4))) == 6
    assert spatial_permutations((4, 5, 4)) == [(0, 1, 2), (2, 1, 0)]
    assert spatial_permutations((3, 4, 5)) == [(0, 1, 2)]


def test_cube_reaches_all_48_symmetries_and_keeps_pairs_aligned():
    rng = np.random.default_rng(0)
    image = np.arange(2 * 27, dtype=np.float32).reshape(2, 3, 3, 3)
    target = image[:1] * 10
    seen = set()
    for _ in range(600):
        im, tg = random_flip_permute(image, target, rng)
        assert im.shape == image.shape and im.flags.c_contiguous
        np.testing.assert_array_equal(tg, im[:1] * 10)  # same transform for both
        assert sorted(im[1].ravel().tolist()) == sorted(image[1].ravel().tolist())
        seen.add(im[0].tobytes())
    assert len(seen) == 48


def test_non_cube_only_swaps_equal_axes():
    rng = np.random.default_rng(1)
    image = np.random.default_rng(2).random((1, 3, 4, 3)).astype(np.float32)
    seen = set()
    for _ in range(300):
        im, none = random_flip_permute(image, None, rng)
        assert none is None and im.shape == (1, 3, 4, 3)
        seen.add(im.tobytes())
    assert len(seen) == 16  # 8 flips x 2 permutations (identity, swap axes 0 and 2)
