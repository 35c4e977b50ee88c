"""Per-region overlap and distance metrics: Dice, sensitivity, specificity, HD95.

All metrics compare boolean region masks ``(R, *spatial)`` (R = 3 for WT/TC/ET):

- Dice        = 2 |P & T| / (|P| + |T|)
- sensitivity = |P & T| / |T|
- specificity = |~P & ~T| / |~T|   (the standard definition; the reference paper prints
  ``|P0 & T0| / |P0|``, a typo)
- HD95 (mm)   = MONAI's symmetric 95th-percentile Hausdorff distance between the mask
  surfaces, with the voxel spacing; the larger of the two directed 95th percentiles.

Empty regions (``empty``):

- ``"one"`` (default, as the BraTS challenge evaluations): prediction and truth both
  empty gives Dice 1, HD95 0, sensitivity 1. Exactly one of them empty gives Dice 0 and
  HD95 = the image diagonal in mm (the largest distance the grid can hold; 373.13 mm on the
  240x240x155 1 mm BraTS grid, the value the BraTS evaluations use). An empty truth gives
  sensitivity 1 (nothing to miss) whatever the prediction; false positives then show in
  Dice, HD95 and specificity. A truth that fills the grid gives specificity 1.
- ``"nan"``: every value whose definition divides by zero, or measures a distance to an
  empty set, is NaN: both empty gives Dice NaN; either empty gives HD95 NaN; empty truth
  gives sensitivity NaN; full truth gives specificity NaN. Summaries skip NaNs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["EMPTY_MODES", "METRICS", "dice", "region_metrics", "hd95", "image_diagonal_mm"]

#: The per-region metrics, in report order; the names carry units where there are any.
METRICS = ("dice", "sensitivity", "specificity", "hd95_mm")
EMPTY_MODES = ("one", "nan")


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the grid's diagonal in mm: the HD95 given when one mask is empty."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile surface distance in mm (MONAI); both masks non-empty."""
    from monai.metrics import compute_hausdorff_distance

    if not pred.any() or not truth.any():
        raise ValueError("hd95 needs two non-empty masks; region_metrics handles empties")
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None]  # (1, 1, *S)
    t = torch.from_numpy(np.ascontiguousarray(truth, dtype=bool))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empties we already excluded
        out = compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                         spacing=[float(s) for s in spacing])
    return float(out[0, 0])


def dice(pred: np.ndarray, truth: np.ndarray, axes: Sequence[int] | None = None,
         empty: str = "one") -> np.ndarray:
    """Hard Dice ``2 |P & T| / (|P| + |T|)`` of boolean masks, summed over ``axes``.

    The one Dice of swapseg: the evaluation (per case and region) and the validation inside
    training (per sample and region, ``axes=(2, 3, 4)`` of ``(B, R, D, H, W)``) both call
    it. Both masks empty: 1 (``empty="one"``) or NaN (``"nan"``). Default: all axes.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    ax = tuple(range(pred.ndim)) if axes is None else tuple(axes)
    inter = np.count_nonzero(pred & truth, axis=ax)
    total = np.count_nonzero(pred, axis=ax) + np.count_nonzero(truth, axis=ax)
    undefined = 1.0 if empty == "one" else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), undefined)


def _ratio(num: int, den: int, when_empty: float) -> float:
    return num / den if den else when_empty


def _one_region(p: np.ndarray, t: np.ndarray, spacing: Sequence[float],
                empty: str) -> dict[str, float]:
    undefined = 1.0 if empty == "one" else math.nan
    n_p, n_t = int(p.sum()), int(t.sum())
    tp = int(np.count_nonzero(p & t))
    tn = int(np.count_nonzero(~p & ~t))
    n_neg = t.size - n_t
    if n_p and n_t:
        dist = hd95(p, t, spacing)
    elif not n_p and not n_t:
        dist = 0.0 if empty == "one" else math.nan
    else:
        dist = image_diagonal_mm(t.shape, spacing) if empty == "one" else math.nan
    return {"dice": float(dice(p, t, empty=empty)),
            "sensitivity": _ratio(tp, n_t, undefined),
            "specificity": _ratio(tn, n_neg, undefined),
            "hd95_mm": dist}


def region_metrics(pred: np.ndarray, truth: np.ndarray,
                   spacing: Sequence[float] | None = None, empty: str = "one",
                   regions: Sequence[str] = ("WT", "TC", "ET")) -> dict[str, dict[str, float]]:
    """Metrics of one case, keyed metric first: ``{"dice": {"WT": .., ..}, ..., "hd95_mm": ..}``.

    ``pred`` and ``truth`` are boolean region masks of shape ``(R, *spatial)`` with R =
    ``len(regions)`` (probabilities must be thresholded first). ``spacing`` is the voxel
    size in mm per spatial axis (default 1 mm). See the module docstring for ``empty``.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    if pred.ndim < 2 or pred.shape[0] != len(regions):
        raise ValueError(f"expected ({len(regions)}, *spatial) region masks, got {pred.shape}")
    if pred.dtype != bool or truth.dtype != bool:
        raise ValueError("region masks must be boolean; threshold probabilities first")
    if empty not in EMPTY_MODES:
        raise ValueError(f"empty must be one of {EMPTY_MODES}, got {empty!r}")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * (pred.ndim - 1)))
    if len(spacing) != pred.ndim - 1:
        raise ValueError(f"spacing {spacing} does not match {pred.ndim - 1} spatial axes")
    out: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    for r, name in enumerate(regions):
        for metric, value in _one_region(pred[r], truth[r], spacing, empty).items():
            out[metric][name] = value
    return out
