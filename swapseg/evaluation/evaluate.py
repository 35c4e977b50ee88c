"""Score a folder of predictions against a dataset folder: ``swapseg evaluate``.

Predictions are NIfTI label maps in the truth's label convention, one per case, named by
case id: ``<case>.nii.gz`` (what ``swapseg predict`` writes), ``<case>.nii``, or with a
``_pred``/``_seg``/``_prediction`` suffix. Every truth case must have one; extra files are
listed in the summary and otherwise ignored. Every file is checked (present, readable,
same grid as the truth) before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from swapseg.errors import InputError
from swapseg.evaluation import report
from swapseg.evaluation.metrics import EMPTY_MODES, region_metrics
from swapseg.io import write_json

__all__ = ["evaluate_folders", "match_predictions", "score_case", "flair_volume"]

_SUFFIXES = ("", "_pred", "_seg", "_prediction")
AFFINE_TOL = 1e-3


@dataclass(frozen=True)
class _Pair:
    case: Any  # swapseg.data.brats.Case
    pred: Path


def _case_key(path: Path) -> str | None:
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return None


def match_predictions(pred_dir: str | Path, cases: Sequence[Any]) -> tuple[list[_Pair],
                                                                            list[str]]:
    """Pair each truth case with its prediction file; returns (pairs, unmatched files)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: no such prediction folder")
    files = {key: p for p in sorted(pred_dir.iterdir())
             if p.is_file() and (key := _case_key(p)) is not None}
    pairs, used = [], set()
    for case in cases:
        hits = [files[case.case_id + s] for s in _SUFFIXES if case.case_id + s in files]
        if not hits:
            raise InputError(f"no prediction for case {case.case_id} in {pred_dir} "
                             f"(expected {case.case_id}.nii.gz)")
        if len(hits) > 1:
            raise InputError(f"case {case.case_id} has several predictions: "
                             f"{', '.join(h.name for h in hits)}")
        pairs.append(_Pair(case, hits[0]))
        used.add(hits[0].name)
    unmatched = [p.name for p in files.values() if p.name not in used]
    return pairs, unmatched


def _header(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__})") from None


def _check_grid(pair: _Pair) -> None:
    """Same shape and affine as the truth segmentation (headers only: cheap)."""
    truth, pred = _header(pair.case.seg), _header(pair.pred)
    t_shape, p_shape = tuple(truth.shape[:3]), tuple(pred.shape)
    while len(p_shape) > 3 and p_shape[-1] == 1:  # (X, Y, Z, 1) is still one volume
        p_shape = p_shape[:-1]
    if p_shape != t_shape:
        raise InputError(f"{pair.pred}: shape {tuple(pred.shape)} does not match the truth "
                         f"{tuple(truth.shape)} of case {pair.case.case_id}")
    if not np.allclose(pred.affine, truth.affine, atol=AFFINE_TOL):
        raise InputError(f"{pair.pred}: affine differs from the truth of case "
                         f"{pair.case.case_id} ({pair.case.seg})")


def _labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        data = np.asanyarray(_header(path).dataobj)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__})"
                         ) from None
    return np.asarray(data).reshape(shape)


def score_case(pair: _Pair, empty: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Metrics row of one case, and its (truth, prediction) region masks."""
    from swapseg.data.labels import check_labels, labels_to_regions

    case = pair.case
    t_img = _header(case.seg)
    truth = _labels(case.seg, t_img.shape[:3])
    pred = _labels(pair.pred, t_img.shape[:3])
    check_labels(truth, case.convention, str(case.seg))
    check_labels(pred, case.convention, str(pair.pred))
    t_reg = labels_to_regions(truth.astype(np.int64), case.convention)
    p_reg = labels_to_regions(pred.astype(np.int64), case.convention)
    spacing = tuple(float(z) for z in t_img.header.get_zooms()[:3])
    metrics = region_metrics(p_reg, t_reg, spacing, empty=empty)
    return report.flatten(case.case_id, metrics), t_reg, p_reg


def _axial_axis(affine: np.ndarray) -> int:
    codes = nib.aff2axcodes(affine)
    return next((i for i, c in enumerate(codes) if c in ("S", "I")), 2)


def flair_volume(case: Any) -> np.ndarray:
    """The FLAIR volume (X, Y, Z) of a case, for the overlays."""
    if isinstance(case.images, dict):
        return np.asarray(_header(case.images["flair"]).dataobj, dtype=np.float32)
    from swapseg.data.brats import load_case

    return load_case(case).image[0]


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, out_dir: str | Path, *,
                     empty: str = "one", overlays: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Score ``pred_dir`` against the segmentations of the dataset at ``truth_dir``.

    Writes ``out_dir/{per_case.csv, summary.json, boxplot.png}`` and ``out_dir/overlays/``
    (one PNG per case, or the first ``overlays`` cases; 0 for none). Returns the summary.
    """
    from tqdm import tqdm

    from swapseg.data.brats import find_cases

    if empty not in EMPTY_MODES:
        raise InputError(f"--empty must be one of {', '.join(EMPTY_MODES)}, got {empty!r}")
    t0 = time.perf_counter()
    cases = find_cases(truth_dir).cases
    no_seg = [c.case_id for c in cases if c.seg is None]
    if no_seg:
        raise InputError(f"truth case {no_seg[0]} in {truth_dir} has no segmentation")
    pairs, unmatched = match_predictions(pred_dir, cases)
    for pair in pairs:
        _check_grid(pair)
    n_overlays = len(pairs) if overlays is None else max(0, overlays)
    rows, slices = [], []
    for i, pair in enumerate(tqdm(pairs, desc="evaluate", unit="case", disable=not progress)):
        row, t_reg, p_reg = score_case(pair, empty)
        rows.append(row)
        if i < n_overlays:  # keep only the slice to draw: volumes would not fit in memory
            axis = _axial_axis(_header(pair.case.seg).affine)
            t_cls, p_cls = report.label_classes(t_reg), report.label_classes(p_reg)
            k = report.pick_slice(t_cls, p_cls, axis)
            slices.append((pair, row, axis, k, np.take(t_cls, k, axis=axis),
                           np.take(p_cls, k, axis=axis)))
    out = Path(out_dir)
    report.write_per_case_csv(out / "per_case.csv", rows)
    summary = report.summarize(rows)
    summary.update({"empty": empty, "pred": str(pred_dir), "truth": str(truth_dir),
                    "unmatched_predictions": unmatched})
    report.boxplot({"prediction": {r: [row[f"dice_{r}"] for row in rows]
                                   for r in report.REGIONS}}, out / "boxplot.png",
                   title=f"Dice per region ({len(rows)} cases)")
    for pair, row, axis, k, t_slice, p_slice in slices:
        flair = np.take(flair_volume(pair.case), k, axis=axis)
        report.overlay_slices(flair, [t_slice, p_slice],
                              out / "overlays" / f"{pair.case.case_id}.png",
                              title=f"{pair.case.case_id} (slice {k}): Dice WT "
                                    f"{row['dice_WT']:.2f} TC {row['dice_TC']:.2f} "
                                    f"ET {row['dice_ET']:.2f}")
    summary["evaluate_s"] = time.perf_counter() - t0
    write_json(out / "summary.json", summary)
    return summary
