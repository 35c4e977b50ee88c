"""Acceptance checks on the real BraTS 2018 sample (skipped where it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from swapseg.data.brats import BratsVolumes, find_cases, load_case, preprocess, restore
from swapseg.data.labels import labels_to_regions

pytestmark = pytest.mark.realdata

#: Every real brain fits 192^3 at zoom 1 (largest box in the sample: 146 x 181 x 146).
TARGET = 192


@pytest.fixture(scope="module")
def index(brats_sample):
    return find_cases(brats_sample)


def _case(index, case_id):
    return next(c for c in index.cases if c.case_id == case_id)


def test_layout_detected(index):
    assert index.layout == "brats2017-2018"
    assert len(index.cases) == 12 and index.problems == []
    assert all(c.seg is not None and c.convention == "brats2017" for c in index.cases)


@pytest.mark.parametrize("case_id", ["Brats18_2013_20_1", "Brats18_TCIA10_639_1"])
def test_region_counts_and_round_trip(index, case_id):
    """Nothing is cropped away, and labels survive preprocess + restore voxel for voxel."""
    loaded = load_case(_case(index, case_id))
    assert loaded.image.shape == (4, 240, 240, 155) and loaded.spacing == (1.0, 1.0, 1.0)
    prep = preprocess(loaded, TARGET)
    assert prep.info.cut_brain_voxels == 0
    raw = labels_to_regions(loaded.seg, "brats2017").sum(axis=(1, 2, 3))
    after = labels_to_regions(prep.seg, "brats2017").sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(after, raw)
    assert raw[2] > 0
    back = restore(prep.seg, prep.info)
    assert back.shape == (240, 240, 155)
    np.testing.assert_array_equal(back, loaded.seg)
    # the saturated case (values up to 32767) z-scores like any other
    for c in range(4):
        nz = prep.image[c][prep.image[c] != 0]
        assert abs(float(nz.mean())) < 1e-3 and abs(float(nz.std()) - 1) < 1e-3


def test_int16_and_uint8_segs_load_alike(index):
    a = load_case(_case(index, "Brats18_2013_3_1"))
    assert a.seg.dtype == np.int16
    assert set(np.unique(a.seg).tolist()) == {0, 1, 2, 4}


def test_zoomed_volumes_for_cpu_training(index, tmp_path):
    ds = BratsVolumes([_case(index, "Brats18_TCIA10_628_1")], 64, cache_dir=tmp_path, zoom=3)
    item = ds[0]
    assert item["image"].shape == (4, 64, 64, 64)
    info = ds.info(0)
    assert info.cut_brain_voxels == 0 and info.zoom == 3
    # little enhancing tumor in this case, but some survives the 3x downsampling
    assert 0 < item["target"][2].sum() < item["target"][1].sum() <= item["target"][0].sum()


@pytest.mark.slow
def test_every_real_case_fits_and_round_trips(index):
    """All 12 cases (about 1.5 s each): nothing cut at 192^3, nor at 64^3 with zoom 3."""
    for case in index.cases:
        loaded = load_case(case)
        prep = preprocess(loaded, TARGET)
        assert prep.info.cut_brain_voxels == 0, case.case_id
        np.testing.assert_array_equal(restore(prep.seg, prep.info), loaded.seg)
        small = preprocess(loaded, 64, zoom=3)
        assert small.info.cut_brain_voxels == 0, case.case_id
        raw = labels_to_regions(loaded.seg, "brats2017").sum(axis=(1, 2, 3))
        after = labels_to_regions(small.seg, "brats2017").sum(axis=(1, 2, 3)) * 27
        np.testing.assert_allclose(after, raw, rtol=0.25, atol=27 * 30)
