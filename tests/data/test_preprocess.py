from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from swapseg.data.brats import LoadedCase, PrepInfo, preprocess, restore
from swapseg.errors import InputError


def _loaded(image: np.ndarray, seg: np.ndarray | None = None) -> LoadedCase:
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    header = nib.Nifti1Header()
    header.set_data_shape(image.shape[1:])
    header.set_zooms((1.0, 1.0, 2.0))
    return LoadedCase("c1", image.astype(np.float32), seg, affine, header, (1.0, 1.0, 2.0),
                      "brats2017")


def _box_case(shape=(19, 21, 23), box=((3, 12), (5, 16), (2, 9)), seed=0, tumor=True):
    """Random positive intensities inside a box, zeros elsewhere; a tumor inside it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    sl = tuple(slice(a, b) for a, b in box)
    for c in range(4):
        image[(c, *sl)] = rng.uniform(10 * (c + 1), 10 * (c + 1) + 5, image[(c, *sl)].shape)
    seg = np.zeros(shape, np.uint8)
    if not tumor:
        return image, seg
    seg[5:9, 7:12, 3:7] = 2
    seg[6:8, 8:10, 4:6] = 1
    seg[7, 9, 5] = 4
    return image, seg


def test_crop_pad_centred_and_zscore():
    image, seg = _box_case()
    prep = preprocess(_loaded(image, seg), (16, 16, 16))
    info = prep.info
    assert prep.image.shape == (4, 16, 16, 16) and prep.image.dtype == np.float32
    assert info.bbox_start == (3, 5, 2) and info.bbox_stop == (12, 16, 9)
    # box of 9, 11, 7 voxels centred in 16: origin = start - (16 - size) // 2
    assert info.origin == (3 - 3, 5 - 2, 2 - 4)
    for c in range(4):
        nz = prep.image[c][prep.image[c] != 0]
        assert nz.size == 9 * 11 * 7
        assert abs(nz.mean()) < 1e-5 and abs(nz.std() - 1) < 1e-4
        vals = image[c][image[c] != 0]
        assert info.mean[c] == pytest.approx(vals.mean(), rel=1e-6)
        assert info.std[c] == pytest.approx(vals.std(), rel=1e-5)
    # the tumor sits where the window puts it
    assert prep.seg[7 - 0, 9 - 3, 5 + 2] == 4
    assert (prep.seg != 0).sum() == (seg != 0).sum()


def test_round_trip_exact_zoom1():
    image, seg = _box_case()
    prep = preprocess(_loaded(image, seg), 16)
    back = restore(prep.seg, prep.info)
    assert back.shape == seg.shape
    np.testing.assert_array_equal(back, seg)
    # channels-first arrays (regions, probabilities) too
    stacked = np.stack([prep.seg == 4, prep.seg == 1]).astype(np.float32)
    np.testing.assert_array_equal(restore(stacked, prep.info)[0], seg == 4)


def test_zoom_means_blocks_and_restores_nearest():
    image, seg = _box_case(shape=(20, 22, 24), box=((4, 12), (6, 14), (2, 10)))
    prep = preprocess(_loaded(image, seg), (6, 6, 6), zoom=2)
    info = prep.info
    assert prep.image.shape == (4, 6, 6, 6) and info.zoom == 2
    # the 12^3 window starts 2 voxels before the 8^3 box; recompute block means by hand
    o = info.origin
    assert o == (2, 4, 0)
    z = (image[0] - info.mean[0]) / info.std[0] * (image[0] != 0)
    block = z[o[0] + 4:o[0] + 6, o[1] + 4:o[1] + 6, o[2] + 4:o[2] + 6].mean()
    assert prep.image[0, 2, 2, 2] == pytest.approx(block, abs=1e-5)
    # labels: the centre voxel (offset 1) of each block
    assert prep.seg[2, 2, 2] == seg[o[0] + 5, o[1] + 5, o[2] + 5]
    back = restore(prep.seg, info)
    assert back.shape == seg.shape
    # nearest upsampling: every restored voxel equals its block's sampled label, inside the box
    expected = np.zeros_like(seg)
    up = prep.seg.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    expected[4:12, 6:14, 2:10] = up[4 - o[0]:12 - o[0], 6 - o[1]:14 - o[1], 2 - o[2]:10 - o[2]]
    np.testing.assert_array_equal(back, expected)


def test_window_past_the_volume_is_zero_padded():
    image, seg = _box_case(shape=(8, 9, 10), box=((0, 8), (0, 9), (0, 10)), tumor=False)
    seg[2:4, 2:4, 2:4] = 2
    prep = preprocess(_loaded(image, seg), 16)
    assert prep.info.origin == (-4, -3, -3)  # (16 - size) // 2 before each box
    assert (prep.image[:, :4] == 0).all() and (prep.image[:, 12:] == 0).all()
    np.testing.assert_array_equal(restore(prep.seg, prep.info), seg)


def test_brain_larger_than_target_keeps_tumor_and_warns():
    image, seg = _box_case(shape=(30, 12, 12), box=((0, 30), (0, 12), (0, 12)))
    seg[:] = 0
    seg[22:27, 3:6, 3:6] = 2
    with pytest.warns(UserWarning, match=r"brain voxels cut away \(tumor kept\)"):
        prep = preprocess(_loaded(image, seg), (16, 12, 12))
    assert prep.info.cut_brain_voxels == 14 * 12 * 12
    assert (prep.seg == 2).sum() == (seg == 2).sum()
    np.testing.assert_array_equal(restore(prep.seg, prep.info), seg)


def test_tumor_larger_than_target_raises():
    image, seg = _box_case(shape=(30, 12, 12), box=((0, 30), (0, 12), (0, 12)))
    seg[:] = 0
    seg[2:25, 3:6, 3:6] = 2
    with pytest.raises(InputError, match=r"case c1: tumor spans 23 voxels on axis 0"):
        preprocess(_loaded(image, seg), (16, 12, 12))


def test_bad_arguments_and_empty_volumes():
    image, seg = _box_case()
    with pytest.raises(InputError, match="target shape"):
        preprocess(_loaded(image, seg), (16, 16))
    with pytest.raises(InputError, match="zoom"):
        preprocess(_loaded(image, seg), 16, zoom=0)
    with pytest.raises(InputError, match="every voxel is zero"):
        preprocess(_loaded(np.zeros_like(image)), 16)
    image[2] = 0
    with pytest.raises(InputError, match="modality t1ce is zero everywhere"):
        preprocess(_loaded(image, seg), 16)
    prep = preprocess(_loaded(*_box_case()), 16)
    with pytest.raises(InputError, match="does not end in the target shape"):
        restore(np.zeros((15, 16, 16)), prep.info)


def test_prepinfo_json_and_nifti():
    image, seg = _box_case()
    loaded = _loaded(image, seg)
    prep = preprocess(loaded, 16)
    info = PrepInfo.from_dict(json.loads(json.dumps(prep.info.to_dict())))
    assert info == prep.info
    img = info.nifti(restore(prep.seg, info))
    np.testing.assert_allclose(img.affine, loaded.affine)
    assert img.header.get_zooms() == (1.0, 1.0, 2.0)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), seg)


def test_nifti2_header_kept_as_nifti1():
    image, seg = _box_case()
    loaded = _loaded(image, seg)
    loaded.header = nib.Nifti2Image(seg, loaded.affine).header
    prep = preprocess(loaded, 16)
    img = prep.info.nifti(restore(prep.seg, prep.info))
    np.testing.assert_allclose(img.affine, loaded.affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), seg)


@pytest.mark.parametrize("zoom", [1, 2, 3])
def test_prepare_brain_keeps_the_whole_box_at_any_zoom(zoom: int) -> None:
    """The brain grid maps back onto exactly the brain box, on odd sizes, at any zoom."""
    from swapseg.data.preprocess import prepare_brain

    rng = np.random.default_rng(zoom)
    image = np.zeros((4, 23, 18, 13), np.float32)
    image[:, 3:20, 2:17, 1:12] = rng.uniform(1, 2, (4, 17, 15, 11))
    prep = prepare_brain(_loaded(image), zoom)
    assert prep.seg is None and prep.info.cut_brain_voxels == 0
    assert prep.image.shape == (4, *(-(-n // zoom) for n in (17, 15, 11)))
    back = restore(np.ones(prep.image.shape[1:], np.uint8), prep.info)
    expected = np.zeros((23, 18, 13), np.uint8)
    expected[3:20, 2:17, 1:12] = 1
    np.testing.assert_array_equal(back, expected)
    if zoom == 1:  # z-scored over the nonzero voxels, as in training
        brain = prep.image[0][prep.image[0] != 0]
        assert abs(brain.mean()) < 1e-5 and abs(brain.std() - 1) < 1e-4


def test_prepare_brain_never_reads_the_labels() -> None:
    """A label outside the image's nonzero voxels changes the training box, not this one."""
    from swapseg.data.preprocess import prepare_brain

    image, seg = _box_case()
    seg = seg.copy()
    seg[0, 0, 0] = 2
    with_seg, without = prepare_brain(_loaded(image, seg)), prepare_brain(_loaded(image))
    np.testing.assert_array_equal(with_seg.image, without.image)
    assert with_seg.info == without.info and with_seg.info.bbox_start == (3, 5, 2)
    assert preprocess(_loaded(image, seg), (32, 32, 32)).info.bbox_start == (0, 0, 0)


def test_prepare_brain_of_an_empty_image_is_an_input_error() -> None:
    from swapseg.data.preprocess import prepare_brain

    with pytest.raises(InputError, match="every voxel is zero"):
        prepare_brain(_loaded(np.zeros((4, 5, 6, 7))))
