from __future__ import annotations

import numpy as np
import pytest

from swapseg.data.labels import (
    CONVENTIONS,
    REGIONS,
    check_labels,
    labels_to_regions,
    regions_to_labels,
)
from swapseg.errors import InputError

# (convention, necrotic/non-enhancing core label, edema label, enhancing label)
TABLE = [("brats2017", 1, 2, 4), ("brats2023", 1, 2, 3), ("msd", 2, 1, 3)]


def test_regions_constant():
    assert REGIONS == ("WT", "TC", "ET")
    assert set(CONVENTIONS) == {"brats2017", "brats2023", "msd"}


@pytest.mark.parametrize("conv,core,edema,et", TABLE)
def test_labels_to_regions_by_hand(conv, core, edema, et):
    seg = np.array([0, core, edema, et], dtype=np.uint8)
    r = labels_to_regions(seg, conv)
    assert r.dtype == bool and r.shape == (3, 4)
    # WT = all tumor; TC = core + enhancing; ET = enhancing only
    assert r[0].tolist() == [False, True, True, True]
    assert r[1].tolist() == [False, True, False, True]
    assert r[2].tolist() == [False, False, False, True]


@pytest.mark.parametrize("conv,core,edema,et", TABLE)
def test_round_trip(conv, core, edema, et):
    rng = np.random.default_rng(0)
    seg = rng.choice(np.array([0, core, edema, et], np.uint8), size=(5, 6, 7))
    back = regions_to_labels(labels_to_regions(seg, conv), conv)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)


def test_regions_to_labels_probabilities_and_inner_wins():
    probs = np.zeros((3, 4), np.float32)
    probs[:, 1] = [0.9, 0.2, 0.1]    # WT only -> edema
    probs[:, 2] = [0.9, 0.7, 0.4]    # TC -> core
    probs[:, 3] = [0.3, 0.1, 0.51]   # ET without WT (inconsistent) -> ET anyway
    assert regions_to_labels(probs, "brats2017").tolist() == [0, 2, 1, 4]
    assert regions_to_labels(probs, "msd").tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("conv,bad", [("brats2017", 3), ("brats2023", 4), ("msd", 4),
                                      ("brats2017", 255)])
def test_check_labels_rejects_outside(conv, bad):
    seg = np.zeros((3, 3, 3), np.int16)
    seg[1, 1, 1] = bad
    with pytest.raises(InputError, match=rf"seg.nii.gz: label value {bad} is outside"):
        check_labels(seg, conv, "seg.nii.gz")


def test_check_labels_accepts_int16_and_float_integers():
    check_labels(np.array([0, 1, 2, 4], np.int16), "brats2017")
    check_labels(np.array([0.0, 1.0, 4.0], np.float32), "brats2017")
    with pytest.raises(InputError, match="not an integer"):
        check_labels(np.array([0.0, 1.5], np.float32), "brats2017")


def test_unknown_convention():
    with pytest.raises(InputError, match="unknown label convention 'brats1999'"):
        labels_to_regions(np.zeros(3), "brats1999")
