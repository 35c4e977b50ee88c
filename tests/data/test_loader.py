from __future__ import annotations

import gzip

import numpy as np
import pytest
from tiny_nifti import AFFINE, SHAPE, save, tiny_volumes

from swapseg.data.brats import find_cases, load_case
from swapseg.errors import InputError


def _only_case(root):
    (case,) = find_cases(root).cases
    return case


def test_load_stacks_modalities_in_order(tmp_path, make_case):
    make_case(tmp_path, "Brats18_X_1", seed=3)
    loaded = load_case(_only_case(tmp_path))
    image, seg = tiny_volumes(3)
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (4, *SHAPE)
    np.testing.assert_array_equal(loaded.image, image.astype(np.float32))
    np.testing.assert_array_equal(loaded.seg, seg)
    np.testing.assert_allclose(loaded.affine, AFFINE)
    assert loaded.spacing == (1.0, 1.0, 1.0)
    assert loaded.case_id == "Brats18_X_1" and loaded.convention == "brats2017"


def test_load_msd_maps_channels(tmp_path, make_msd):
    root = make_msd(tmp_path, n=1, order=("T2w", "t1gd", "FLAIR", "T1w"), test_cases=0)
    loaded = load_case(_only_case(root))
    image, seg = tiny_volumes(0, labels=(2, 1, 3))
    np.testing.assert_array_equal(loaded.image, image.astype(np.float32))
    assert sorted(np.unique(loaded.seg).tolist()) == [0, 1, 2, 3]


def test_int16_segmentation_kept(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_2013_1_1")
    _, seg = tiny_volumes(0)
    save(seg.astype(np.int16), d / "Brats18_2013_1_1_seg.nii.gz")
    loaded = load_case(_only_case(tmp_path))
    assert loaded.seg.dtype == np.int16
    np.testing.assert_array_equal(loaded.seg, seg)


def test_shape_mismatch_names_file(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_X_1")
    save(np.ones((19, 21, 22), np.int16), d / "Brats18_X_1_t2.nii.gz")
    with pytest.raises(InputError, match=r"Brats18_X_1_t2.nii.gz: shape \(19, 21, 22\) differs"):
        load_case(_only_case(tmp_path))


def test_affine_mismatch_names_file(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_X_1")
    image, seg = tiny_volumes(0)
    save(seg, d / "Brats18_X_1_seg.nii.gz", affine=np.diag([-1.0, -1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"Brats18_X_1_seg.nii.gz: affine differs"):
        load_case(_only_case(tmp_path))


def test_truncated_gzip_names_file(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_X_1")
    f = d / "Brats18_X_1_t1ce.nii.gz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"Brats18_X_1_t1ce.nii.gz: truncated or corrupt"):
        load_case(_only_case(tmp_path))


def test_garbage_file_names_file(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_X_1")
    (d / "Brats18_X_1_flair.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 30))
    with pytest.raises(InputError, match=r"Brats18_X_1_flair.nii.gz: not a readable NIfTI"):
        load_case(_only_case(tmp_path))
    (d / "Brats18_X_1_flair.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InputError, match=r"Brats18_X_1_flair.nii.gz"):
        load_case(_only_case(tmp_path))


def test_nan_voxel_names_file(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_X_1")
    image, _ = tiny_volumes(0)
    bad = image[1].astype(np.float32)
    bad[5, 5, 5] = np.nan
    bad[6, 5, 5] = np.inf
    save(bad, d / "Brats18_X_1_t1.nii.gz")
    with pytest.raises(InputError, match=r"Brats18_X_1_t1.nii.gz: 2 NaN or inf voxels"):
        load_case(_only_case(tmp_path))


def test_label_outside_convention_names_file(tmp_path, make_case):
    make_case(tmp_path, "Brats18_X_1", labels=(1, 2, 3))
    with pytest.raises(InputError, match=r"Brats18_X_1_seg.nii.gz: label value 3 is outside"):
        load_case(_only_case(tmp_path))


def test_file_deleted_after_discovery(tmp_path, make_case):
    d = make_case(tmp_path, "Brats18_X_1")
    case = _only_case(tmp_path)
    (d / "Brats18_X_1_t2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"Brats18_X_1_t2.nii.gz: no such file"):
        load_case(case)
