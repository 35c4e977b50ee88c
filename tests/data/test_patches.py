from __future__ import annotations

import numpy as np
import pytest
import torch

from swapseg.data.brats import BratsVolumes, find_cases
from swapseg.data.patches import BratsPatches, patch_origin
from swapseg.errors import InputError


@pytest.fixture
def volumes(tmp_path, make_case):
    make_case(tmp_path, "Brats18_A_1", seed=1)
    make_case(tmp_path, "Brats18_B_1", seed=2)
    return BratsVolumes(find_cases(tmp_path), (20, 24, 28), cache_dir=tmp_path / "cache")


def test_patch_origin_uniform_covers_all_positions():
    rng = np.random.default_rng(0)
    starts = {patch_origin((5, 6, 7), (3, 6, 2), rng) for _ in range(400)}
    # axis 0: 0..2, axis 1: only 0, axis 2: 0..5
    assert starts == {(a, 0, c) for a in range(3) for c in range(6)}


def test_patch_origin_centres_on_tumor_and_clamps():
    rng = np.random.default_rng(0)
    assert patch_origin((10, 10, 10), (4, 4, 4), rng, np.array([[5, 5, 5]])) == (3, 3, 3)
    assert patch_origin((10, 10, 10), (4, 4, 4), rng, np.array([[0, 9, 1]])) == (0, 6, 0)


def test_items_are_slices_of_the_volume(volumes):
    ds = BratsPatches(volumes, (8, 9, 10), per_volume=3, seed=1)
    assert len(ds) == 6
    full = volumes[1]
    for i in (3, 4, 5):
        item = ds[i]
        assert item["case_id"] == "Brats18_B_1"
        assert item["image"].shape == (4, 8, 9, 10) and item["target"].shape == (3, 8, 9, 10)
        # find where the patch came from: exactly one origin matches
        img = full["image"].numpy()
        hits = [(a, b, c) for a in range(13) for b in range(16) for c in range(19)
                if np.array_equal(img[:, a:a + 8, b:b + 9, c:c + 10], item["image"].numpy())]
        assert len(hits) >= 1
        a, b, c = hits[0]
        assert torch.equal(full["target"][:, a:a + 8, b:b + 9, c:c + 10], item["target"])


def test_tumor_fraction_oversamples_tumor(volumes):
    def tumor_share(fraction):
        torch.manual_seed(0)
        ds = BratsPatches(volumes, 6, per_volume=40, tumor_fraction=fraction, seed=0)
        return np.mean([ds[i]["target"][0].sum().item() > 0 for i in range(len(ds))])

    uniform, always = tumor_share(0.0), tumor_share(1.0)
    assert always == 1.0
    assert uniform < 0.4  # about 12% of positions overlap the 4x5x4 tumor


def test_bad_arguments(volumes):
    with pytest.raises(InputError, match="larger than the volumes"):
        BratsPatches(volumes, 22)
    with pytest.raises(InputError, match="tumor_fraction"):
        BratsPatches(volumes, 8, tumor_fraction=1.5)
    with pytest.raises(InputError, match="per_volume"):
        BratsPatches(volumes, 8, per_volume=0)
