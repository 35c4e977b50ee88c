"""Score a folder of predictions against ground truth: ``swapseg evaluate``.

The truth is either a dataset folder (any layout :func:`swapseg.data.layouts.find_cases`
reads; every case needs its segmentation) or a folder of label files alone, one per case:
``<case>.nii.gz``, ``<case>_seg.nii.gz`` or ``<case>-seg.nii.gz`` (``.nii`` too), as
nnU-Net's ``nnUNetv2_evaluate_folder`` takes. Label numbering: the dataset's convention,
``brats2017`` (0/1/2/4) for a label folder, or ``convention`` (e.g. ``brats2023``:
1 NETC, 2 SNFH, 3 ET).

Predictions are NIfTI label maps in that convention, one per case, named by case id:
``<case>.nii.gz`` (what ``swapseg predict`` writes), ``<case>.nii``, or with a
``_pred``/``_seg``/``_prediction`` suffix. Every truth case must have one, unless
``only_predicted`` (``--only-predicted``) scores the cases that have one and lists the
others in the summary as ``skipped_cases`` (after predicting 2 of 12 cases, say); extra
files are listed in the summary and otherwise ignored. Every file is checked (present, readable,
same grid and affine as the truth) before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from swapseg.data.brats import find_cases, load_case
from swapseg.data.labels import CONVENTIONS, check_labels, labels_to_regions
from swapseg.data.layouts import Case, looks_like_case
from swapseg.errors import InputError
from swapseg.evaluation import report
from swapseg.evaluation.metrics import EMPTY_MODES, region_metrics
from swapseg.io import write_json
from swapseg.progress import Progress, track

__all__ = ["Truth", "evaluate_folders", "find_truths", "match_predictions", "score_case",
           "flair_volume"]

_SUFFIXES = ("", "_pred", "_seg", "_prediction")
_TRUTH_SUFFIXES = ("_seg", "-seg")
#: label numbering of a folder of label files, unless --convention says otherwise
DEFAULT_CONVENTION = "brats2017"
AFFINE_TOL = 1e-3


@dataclass(frozen=True)
class Truth:
    """One truth case: its label file, numbering, and images (for overlays) if known."""

    case_id: str
    seg: Path
    convention: str
    #: modality -> file, one 4-D file (MSD), or None for a label file alone.
    images: dict[str, Path] | Path | None = None
    channels: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _Pair:
    case: Truth
    pred: Path


def _label_folder(root: Path, files: list[Path], convention: str) -> list[Truth]:
    if looks_like_case(root):
        raise InputError(f"{root}: this looks like a single case; pass its parent folder")
    truths: dict[str, Truth] = {}
    for path in files:
        key = _case_key(path) or ""
        for suffix in _TRUTH_SUFFIXES:
            key = key.removesuffix(suffix)
        if key in truths:
            raise InputError(f"{root}: case {key} has several label files: "
                             f"{truths[key].seg.name}, {path.name}")
        truths[key] = Truth(key, path, convention)
    return list(truths.values())


def find_truths(truth_dir: str | Path, convention: str | None = None) -> list[Truth]:
    """The truth cases of a dataset folder or of a folder of label files."""
    if convention is not None and convention not in CONVENTIONS:
        raise InputError(f"--convention {convention}: not one of {', '.join(CONVENTIONS)}")
    root = Path(truth_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such truth folder")
    files = [p for p in sorted(root.iterdir()) if p.is_file() and _case_key(p)
             and not p.name.startswith(".")]
    if files:
        return _label_folder(root, files, convention or DEFAULT_CONVENTION)
    cases = find_cases(root).cases
    no_seg = [c.case_id for c in cases if c.seg is None]
    if no_seg:
        raise InputError(f"truth case {no_seg[0]} in {truth_dir} has no segmentation")
    return [Truth(c.case_id, c.seg, convention or c.convention, c.images, c.channels)
            for c in cases]


def _case_key(path: Path) -> str | None:
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return None


def match_predictions(pred_dir: str | Path, cases: Sequence[Truth], only_predicted: bool = False
                      ) -> tuple[list[_Pair], list[str], list[str]]:
    """Pair each truth case with its prediction file; returns (pairs, unmatched files,
    skipped case ids). A case without a prediction is an error unless ``only_predicted``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: no such prediction folder")
    files = {key: p for p in sorted(pred_dir.iterdir())
             if p.is_file() and (key := _case_key(p)) is not None}
    pairs, used, skipped = [], set(), []
    for case in cases:
        hits = [files[case.case_id + s] for s in _SUFFIXES if case.case_id + s in files]
        if len(hits) > 1:
            raise InputError(f"case {case.case_id} has several predictions: "
                             f"{', '.join(h.name for h in hits)}")
        if hits:
            pairs.append(_Pair(case, hits[0]))
            used.add(hits[0].name)
        else:
            skipped.append(case.case_id)
    if not pairs:
        raise InputError(f"no prediction in {pred_dir} for any of the {len(cases)} truth "
                         f"cases (expected e.g. {cases[0].case_id}.nii.gz)" if cases else
                         f"no truth cases to score the predictions in {pred_dir} against")
    if skipped and not only_predicted:
        raise InputError(f"no prediction for case {skipped[0]} in {pred_dir} (expected "
                         f"{skipped[0]}.nii.gz; {len(skipped)} of {len(cases)} truth cases "
                         f"have none; --only-predicted scores the {len(pairs)} that do)")
    unmatched = [p.name for p in files.values() if p.name not in used]
    return pairs, unmatched, skipped


def _header(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__})") from None


def _check_grid(pair: _Pair) -> None:
    """Same shape and affine as the truth segmentation (headers only: cheap)."""
    truth, pred = _header(pair.case.seg), _header(pair.pred)
    t_shape, p_shape = _one_volume(truth.shape), _one_volume(pred.shape)
    if len(t_shape) != 3:
        raise InputError(f"{pair.case.seg}: shape {tuple(truth.shape)} is not one 3-D "
                         "label volume")
    if p_shape != t_shape:
        raise InputError(f"{pair.pred}: shape {tuple(pred.shape)} does not match the truth "
                         f"{tuple(truth.shape)} of case {pair.case.case_id}")
    if not np.allclose(pred.affine, truth.affine, atol=AFFINE_TOL):
        raise InputError(f"{pair.pred}: affine differs from the truth of case "
                         f"{pair.case.case_id} ({pair.case.seg})")


def _one_volume(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` without trailing 1s beyond the third axis: (X, Y, Z, 1) is one volume."""
    out = tuple(int(s) for s in shape)
    while len(out) > 3 and out[-1] == 1:
        out = out[:-1]
    return out


def _labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        data = np.asanyarray(_header(path).dataobj)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__})"
                         ) from None
    return np.asarray(data).reshape(shape)


def score_case(pair: _Pair, empty: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Metrics row of one case, and its (truth, prediction) region masks."""
    case = pair.case
    t_img = _header(case.seg)
    truth = _labels(case.seg, t_img.shape[:3])
    pred = _labels(pair.pred, t_img.shape[:3])
    try:
        check_labels(truth, case.convention, str(case.seg))
        check_labels(pred, case.convention, str(pair.pred))
    except InputError as exc:
        raise InputError(f"{exc} (another numbering? pass --convention)") from None
    t_reg = labels_to_regions(truth.astype(np.int64), case.convention)
    p_reg = labels_to_regions(pred.astype(np.int64), case.convention)
    spacing = tuple(float(z) for z in t_img.header.get_zooms()[:3])
    metrics = region_metrics(p_reg, t_reg, spacing, empty=empty)
    return report.flatten(case.case_id, metrics), t_reg, p_reg


def _axial_axis(affine: np.ndarray) -> int:
    codes = nib.aff2axcodes(affine)
    return next((i for i, c in enumerate(codes) if c in ("S", "I")), 2)


def flair_volume(case: Any) -> np.ndarray | None:
    """The FLAIR volume (X, Y, Z) of a case, for the overlays; None for labels alone."""
    if case.images is None:
        return None
    if isinstance(case.images, dict):
        return np.asarray(_header(case.images["flair"]).dataobj, dtype=np.float32)
    return load_case(Case(case.case_id, case.images, None, case.convention,
                          case.channels)).image[0]


def _draw_overlays(out: Path, slices: list[tuple]) -> None:
    for pair, row, axis, k, t_slice, p_slice in slices:
        volume = flair_volume(pair.case)
        flair = np.zeros(t_slice.shape, np.float32) if volume is None \
            else np.take(volume, k, axis=axis)  # a label file alone: no image behind
        report.overlay_slices(flair, [t_slice, p_slice],
                              out / "overlays" / f"{pair.case.case_id}.png",
                              title=f"{pair.case.case_id} (slice {k}): Dice WT "
                                    f"{row['dice_WT']:.2f} TC {row['dice_TC']:.2f} "
                                    f"ET {row['dice_ET']:.2f}")


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, out_dir: str | Path, *,
                     empty: str = "one", overlays: int | None = None,
                     convention: str | None = None, only_predicted: bool = False,
                     progress: Progress = "auto") -> dict[str, Any]:
    """Score ``pred_dir`` against the truth at ``truth_dir`` (see the module docstring);
    ``only_predicted``: the truth cases without a prediction are skipped, not an error.

    Writes ``out_dir/{per_case.csv, summary.json, boxplot.png}`` and ``out_dir/overlays/``
    (one PNG per case, or the first ``overlays`` cases; 0 for none). Returns the summary.
    """
    if empty not in EMPTY_MODES:
        raise InputError(f"--empty must be one of {', '.join(EMPTY_MODES)}, got {empty!r}")
    t0 = time.perf_counter()
    truths = find_truths(truth_dir, convention)
    pairs, unmatched, skipped = match_predictions(pred_dir, truths, only_predicted)
    for pair in pairs:
        _check_grid(pair)
    n_overlays = len(pairs) if overlays is None else max(0, overlays)
    rows, slices = [], []
    for i, pair in enumerate(track(pairs, "evaluate", progress,
                                   label=lambda p: p.case.case_id)):
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
                    "conventions": sorted({p.case.convention for p in pairs}),
                    "unmatched_predictions": unmatched, "n_truth_cases": len(truths),
                    "skipped_cases": skipped})
    report.boxplot({"prediction": {r: [row[f"dice_{r}"] for row in rows]
                                   for r in report.REGIONS}}, out / "boxplot.png",
                   title=f"Dice per region ({len(rows)} cases)")
    _draw_overlays(out, slices)
    summary["evaluate_s"] = time.perf_counter() - t0
    write_json(out / "summary.json", summary)
    return summary
