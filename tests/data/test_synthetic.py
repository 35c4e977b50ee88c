from __future__ import annotations

import numpy as np
import pytest

from swapseg.data.brats import find_cases, load_case, preprocess
from swapseg.data.labels import labels_to_regions
from swapseg.data.synthetic import make_phantom, synthesize
from swapseg.errors import InputError


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(48, np.random.default_rng([7, i])) for i in range(8)]


def test_written_in_brats2018_layout_and_loads(tmp_path):
    paths = synthesize(tmp_path, 2, (32, 36, 30), seed=4)
    assert [p.name for p in paths] == ["Synth_4_000", "Synth_4_001"]
    assert sorted(f.name for f in paths[0].iterdir()) == [
        f"Synth_4_000_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]
    idx = find_cases(tmp_path)
    assert idx.layout == "brats2017-2018" and len(idx.cases) == 2
    loaded = load_case(idx.cases[0])  # the same loader as real data
    assert loaded.image.shape == (4, 32, 36, 30)
    assert set(np.unique(loaded.seg).tolist()) == {0, 1, 2, 4}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers
    prep = preprocess(loaded, 48)
    assert prep.image.shape == (4, 48, 48, 48)


def test_deterministic_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", 1, 24, seed=9)[0]
    b = synthesize(tmp_path / "b", 1, 24, seed=9)[0]
    c = synthesize(tmp_path / "c", 1, 24, seed=10)[0]
    la, lb, lc = (load_case(find_cases(p.parent).cases[0]) for p in (a, b, c))
    np.testing.assert_array_equal(la.image, lb.image)
    np.testing.assert_array_equal(la.seg, lb.seg)
    assert not np.array_equal(la.image, lc.image)


def test_contrasts_follow_real_mri(phantoms):
    flair, t1, t1ce, t2 = 0, 1, 2, 3
    et_ratio = []
    for image, seg in phantoms:
        brain = image[0] > 0
        assert brain.mean() > 0.15 and not brain[0].any()  # skull-stripped, background 0
        healthy = brain & (seg == 0)

        def mean(c, where, image=image):
            return image[c][where].mean()

        ed, ncr, et = seg == 2, seg == 1, seg == 4
        assert mean(flair, ed) > 1.4 * mean(flair, healthy)
        assert mean(t2, ed) > 1.2 * mean(t2, healthy)
        assert mean(t1, ed) < mean(t1, healthy)
        et_ratio.append(mean(t1ce, et) / mean(t1ce, healthy))
        if ncr.sum() > 20:
            assert mean(t1ce, ncr) < 0.9 * mean(t1ce, healthy)
        # the four modalities are not copies of each other
        corr = np.corrcoef(image[:, brain].astype(np.float64))
        assert corr[np.triu_indices(4, 1)].max() < 0.95
    # enhancement is bright on T1ce; thin and patchy (lower-grade look) in some cases
    assert min(et_ratio) > 1.2 and np.median(et_ratio) > 1.5


def test_tumors_vary_and_many_exceed_half_the_side(phantoms):
    extents, volumes, centres = [], [], []
    for _, seg in phantoms:
        wt = labels_to_regions(seg, "brats2017")[0]
        idx = np.nonzero(wt)
        extents.append(max(np.ptp(i) + 1 for i in idx))
        volumes.append(wt.sum())
        centres.append([i.mean() for i in idx])
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
    assert sum(e > 24 for e in extents) >= 3  # wider than a 24^3 patch of a 48^3 volume
    assert max(volumes) > 3 * min(volumes)
    assert np.std(np.array(centres), axis=0).min() > 2


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="at least 16"):
        synthesize(tmp_path, 1, 8)
    with pytest.raises(InputError, match="at least 1"):
        synthesize(tmp_path, 0, 32)
