"""Metrics on tiny odd-shaped volumes: values worked out by hand, and an independent check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from swapseg.evaluation.metrics import hd95, image_diagonal_mm, region_metrics

SHAPE = (19, 21, 23)
SPACING = (1.5, 2.0, 2.5)
N = 19 * 21 * 23  # 9177 voxels


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """WT: two 4x5x6 boxes shifted by one voxel along x; TC: truth only; ET: both empty."""
    pred = np.zeros((3, *SHAPE), bool)
    truth = np.zeros((3, *SHAPE), bool)
    truth[0, 2:6, 3:8, 4:10] = True   # 120 voxels
    pred[0, 3:7, 3:8, 4:10] = True    # 120 voxels, 90 shared
    truth[1, 10:12, 10:12, 10:12] = True  # 8 voxels, prediction misses them
    return pred, truth


def test_hand_worked_values() -> None:
    pred, truth = _hand_case()
    m = region_metrics(pred, truth, SPACING)
    # WT: |P&T| = 3*5*6 = 90, |P| = |T| = 120; 30 false positives among 9177-120 negatives
    assert m["dice"]["WT"] == pytest.approx(180 / 240, abs=1e-12)
    assert m["sensitivity"]["WT"] == pytest.approx(90 / 120, abs=1e-12)
    assert m["specificity"]["WT"] == pytest.approx((N - 120 - 30) / (N - 120), abs=1e-12)
    # Surfaces: 96 voxels each; 42 of them are one x-step (1.5 mm) from the other surface,
    # the rest lie on it, so the 95th percentile is 1.5 mm (y and z steps are longer).
    assert m["hd95_mm"]["WT"] == pytest.approx(1.5, abs=1e-6)
    # TC: prediction empty, truth not
    diag = math.sqrt((19 * 1.5) ** 2 + (21 * 2.0) ** 2 + (23 * 2.5) ** 2)
    assert m["dice"]["TC"] == 0.0
    assert m["sensitivity"]["TC"] == 0.0
    assert m["specificity"]["TC"] == 1.0
    assert m["hd95_mm"]["TC"] == pytest.approx(diag, abs=1e-9)
    # ET: both empty -> the BraTS convention
    assert m["dice"]["ET"] == 1.0
    assert m["sensitivity"]["ET"] == 1.0
    assert m["specificity"]["ET"] == 1.0
    assert m["hd95_mm"]["ET"] == 0.0


def test_nan_convention() -> None:
    pred, truth = _hand_case()
    pred[2, 0, 0, 0:3] = True  # ET: false positives only (truth empty)
    one = region_metrics(pred, truth, SPACING, empty="one")
    nan = region_metrics(pred, truth, SPACING, empty="nan")
    assert one["dice"]["ET"] == 0.0 and nan["dice"]["ET"] == 0.0  # 0 / 3 is defined
    assert one["sensitivity"]["ET"] == 1.0 and math.isnan(nan["sensitivity"]["ET"])
    assert one["specificity"]["ET"] == pytest.approx((N - 3) / N)
    assert nan["specificity"]["ET"] == pytest.approx((N - 3) / N)
    assert one["hd95_mm"]["ET"] == pytest.approx(image_diagonal_mm(SHAPE, SPACING))
    assert math.isnan(nan["hd95_mm"]["ET"]) and math.isnan(nan["hd95_mm"]["TC"])
    both_empty = np.zeros((3, *SHAPE), bool)
    m = region_metrics(both_empty, both_empty, empty="nan")
    assert all(math.isnan(m[k]["WT"]) for k in ("dice", "sensitivity", "hd95_mm"))
    assert m["specificity"]["WT"] == 1.0
    full = np.ones((3, *SHAPE), bool)  # truth fills the grid: no negatives
    assert math.isnan(region_metrics(full, full, empty="nan")["specificity"]["WT"])
    assert region_metrics(full, full, empty="one")["specificity"]["WT"] == 1.0


def test_hd95_single_voxels_by_hand() -> None:
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    a[2, 3, 4] = True
    b[5, 7, 4] = True
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(5.0, abs=1e-6)  # 3-4-5
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(math.sqrt(52.0), abs=1e-6)
    assert hd95(a, a, SPACING) == 0.0


def _random_masks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobby random masks: smoothed noise thresholded, nested WT >= TC >= ET like BraTS."""
    rng = np.random.default_rng(seed)

    def blob(level: float) -> np.ndarray:
        return ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0) > level

    truth = np.stack([blob(0.05), blob(0.1), blob(0.15)])
    et = (truth[2] & blob(0.0)) | (rng.random(SHAPE) < 0.01)
    pred = np.stack([truth[0] ^ (rng.random(SHAPE) < 0.05), blob(0.1), et])
    return pred, truth


def _numpy_hd95(p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...]) -> float:
    """HD95 from scipy alone: surface = mask minus its erosion; Euclidean distance maps."""
    ep = p ^ ndimage.binary_erosion(p)
    et = t ^ ndimage.binary_erosion(t)
    d_pt = ndimage.distance_transform_edt(~et, sampling=spacing)[ep]
    d_tp = ndimage.distance_transform_edt(~ep, sampling=spacing)[et]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_independent_computation(seed: int) -> None:
    from monai.metrics import ConfusionMatrixMetric, DiceMetric

    pred, truth = _random_masks(seed)
    assert all(pred[r].any() and truth[r].any() for r in range(3))
    m = region_metrics(pred, truth, SPACING)
    yp = torch.from_numpy(pred[None].astype(np.float32))  # (1, 3, D, H, W)
    yt = torch.from_numpy(truth[None].astype(np.float32))
    dice = DiceMetric(include_background=True, reduction="none")(yp, yt)[0]
    cm = ConfusionMatrixMetric(include_background=True, reduction="none",
                               metric_name=("sensitivity", "specificity"),
                               compute_sample=True)
    cm(yp, yt)
    sens, spec = (x.reshape(-1) for x in cm.aggregate())
    for r, name in enumerate(("WT", "TC", "ET")):
        assert m["dice"][name] == pytest.approx(float(dice[r]), abs=1e-6)
        assert m["sensitivity"][name] == pytest.approx(float(sens[r]), abs=1e-6)
        assert m["specificity"][name] == pytest.approx(float(spec[r]), abs=1e-6)
        expected = _numpy_hd95(pred[r], truth[r], SPACING)
        assert m["hd95_mm"][name] == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert 0.0 < m["dice"][name] < 1.0  # a non-trivial case


def test_rejects_bad_input() -> None:
    good = np.zeros((3, 4, 5, 6), bool)
    with pytest.raises(ValueError, match="shape"):
        region_metrics(good, good[:, :3])
    with pytest.raises(ValueError, match="boolean"):
        region_metrics(good.astype(np.float32), good)
    with pytest.raises(ValueError, match="empty"):
        region_metrics(good, good, empty="zero")
    with pytest.raises(ValueError, match="spacing"):
        region_metrics(good, good, spacing=(1.0, 1.0))
