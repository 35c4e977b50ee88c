"""evaluate_folders: matching, checks before writing, per-case CSV, summary, figures."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from evalcases import AFFINE

from swapseg.data.labels import labels_to_regions
from swapseg.errors import InputError
from swapseg.evaluation.evaluate import evaluate_folders
from swapseg.evaluation.metrics import region_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _seg(root: Path, cid: str) -> np.ndarray:
    return np.asarray(nib.load(root / cid / f"{cid}_seg.nii.gz").dataobj)


def _write_pred(folder: Path, name: str, labels: np.ndarray, affine=AFFINE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), folder / name)
    return folder / name


def _predictions(root: Path, ids: list[str], pred: Path) -> dict[str, np.ndarray]:
    """Case 0: truth shifted by 2 voxels along x; case 1: enhancing tumor missed."""
    out = {}
    for i, cid in enumerate(ids):
        seg = _seg(root, cid)
        p = np.roll(seg, 2, axis=0) if i == 0 else np.where(seg == 4, 1, seg)
        _write_pred(pred, f"{cid}.nii.gz", p)
        out[cid] = p
    return out


def test_scores_match_region_metrics(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    preds = _predictions(root, ids, tmp_path / "pred")
    summary = evaluate_folders(tmp_path / "pred", root, tmp_path / "eval", progress=False)
    with open(tmp_path / "eval" / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ids
    spacing = nib.load(root / ids[0] / f"{ids[0]}_seg.nii.gz").header.get_zooms()
    for row, cid in zip(rows, ids, strict=True):
        m = region_metrics(labels_to_regions(preds[cid], "brats2017"),
                           labels_to_regions(_seg(root, cid), "brats2017"), spacing)
        for metric, per_region in m.items():
            for r, v in per_region.items():
                assert float(row[f"{metric}_{r}"]) == pytest.approx(v, rel=1e-5)
    # case 1 misses ET completely and keeps WT/TC exact
    assert float(rows[1]["dice_ET"]) == 0.0 and float(rows[1]["dice_WT"]) == 1.0
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["n_cases"] == 2 and on_disk["dice"] == summary["dice"]
    for key in ("dice", "sensitivity", "specificity", "hd95_mm"):
        for r in ("WT", "TC", "ET"):
            vals = [float(row[f"{key}_{r}"]) for row in rows]
            assert on_disk[key][r] == pytest.approx(np.mean(vals), rel=1e-5)
            assert on_disk["median"][key][r] == pytest.approx(np.median(vals), rel=1e-5)
            assert on_disk["std"][key][r] == pytest.approx(np.std(vals, ddof=1), rel=1e-4,
                                                         abs=1e-9)
    assert (tmp_path / "eval" / "boxplot.png").read_bytes()[:8] == PNG
    overlays = sorted((tmp_path / "eval" / "overlays").iterdir())
    assert [p.name for p in overlays] == [f"{cid}.png" for cid in ids]
    assert all(p.read_bytes()[:8] == PNG for p in overlays)


def test_nan_convention_and_suffixes(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    pred = tmp_path / "pred"
    for i, cid in enumerate(ids):
        seg = _seg(root, cid)
        _write_pred(pred, f"{cid}_pred.nii.gz" if i else f"{cid}.nii",
                    np.where(seg == 4, 1, seg))  # ET missed in both
    _write_pred(pred, "stray.nii.gz", _seg(root, ids[0]))
    summary = evaluate_folders(pred, root, tmp_path / "eval", empty="nan", overlays=0,
                               progress=False)
    assert summary["dice"]["ET"] == 0.0
    assert summary["hd95_mm"]["ET"] is None and summary["n_nan"]["hd95_mm"]["ET"] == 2
    assert summary["unmatched_predictions"] == ["stray.nii.gz"]
    assert not (tmp_path / "eval" / "overlays").exists()
    text = (tmp_path / "eval" / "summary.json").read_text()
    assert "NaN" not in text  # strict JSON
    one = evaluate_folders(pred, root, tmp_path / "eval1", overlays=0, progress=False)
    diag = math.sqrt(sum((n * z) ** 2 for n, z in zip(
        (23, 19, 17), nib.load(root / ids[0] / f"{ids[0]}_seg.nii.gz").header.get_zooms(),
        strict=True)))
    assert one["hd95_mm"]["ET"] == pytest.approx(diag, rel=1e-6)


def _expect_error(tmp_path: Path, root: Path, match: str) -> None:
    out = tmp_path / "eval"
    with pytest.raises(InputError, match=match) as err:
        evaluate_folders(tmp_path / "pred", root, out, progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists()  # nothing half-written


def test_missing_prediction_names_the_case(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    (tmp_path / "pred" / f"{ids[1]}.nii.gz").unlink()
    _expect_error(tmp_path, root, f"no prediction for case {ids[1]}")


def test_shape_mismatch_names_the_file(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    _write_pred(tmp_path / "pred", f"{ids[1]}.nii.gz", _seg(root, ids[1])[:, :, :-1])
    _expect_error(tmp_path, root, f"{ids[1]}.nii.gz: shape")


def test_affine_mismatch_names_the_file(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    _write_pred(tmp_path / "pred", f"{ids[0]}.nii.gz", _seg(root, ids[0]), affine=np.eye(4))
    _expect_error(tmp_path, root, f"{ids[0]}.nii.gz: affine differs")


def test_bad_labels_and_corrupt_files(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    _write_pred(tmp_path / "pred", f"{ids[1]}.nii.gz", _seg(root, ids[1]) * 0 + 3)
    _expect_error(tmp_path, root, rf"{ids[1]}.nii.gz: label value 3")
    (tmp_path / "pred" / f"{ids[1]}.nii.gz").write_bytes(b"garbage")
    _expect_error(tmp_path, root, f"{ids[1]}.nii.gz: not a readable NIfTI")


def test_truth_without_segmentation(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    (root / ids[0] / f"{ids[0]}_seg.nii.gz").unlink()
    _expect_error(tmp_path, root, f"truth case {ids[0]} .* has no segmentation")
    shutil.rmtree(tmp_path / "pred")
    _expect_error(tmp_path, root, "has no segmentation")  # truth is checked first


def _label_folder(root: Path, ids: list[str], folder: Path, names: list[str]) -> Path:
    """The truth segmentations alone, one file per case, named by ``names`` patterns."""
    folder.mkdir()
    for cid, pattern in zip(ids, names, strict=True):
        shutil.copy(root / cid / f"{cid}_seg.nii.gz", folder / pattern.format(cid))
    return folder


def test_truth_folder_of_label_files_scores_as_the_dataset(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    labels = _label_folder(root, ids, tmp_path / "labels", ["{}.nii.gz", "{}-seg.nii.gz"])
    a = evaluate_folders(tmp_path / "pred", root, tmp_path / "e1", progress=False)
    b = evaluate_folders(tmp_path / "pred", labels, tmp_path / "e2", progress=False)
    for key in ("dice", "sensitivity", "specificity", "hd95_mm"):
        assert a[key] == b[key]
    assert b["n_cases"] == 2 and b["conventions"] == ["brats2017"]
    assert len(list((tmp_path / "e2" / "overlays").glob("*.png"))) == 2


def test_convention_brats2023(tmp_path: Path, dataset) -> None:
    """BraTS 2023 numbering (1 NETC, 2 SNFH, 3 ET): the same regions from other labels."""
    root, ids = dataset
    to_2023 = {0: 0, 1: 1, 2: 2, 4: 3}
    truth, pred = tmp_path / "truth23", tmp_path / "pred23"
    for cid in ids:
        seg = _seg(root, cid)
        _write_pred(truth, f"{cid}_seg.nii.gz", np.vectorize(to_2023.get)(seg))
        _write_pred(pred, f"{cid}.nii.gz", np.vectorize(to_2023.get)(np.where(seg == 4, 1, seg)))
    with pytest.raises(InputError, match="label value 3 is outside the brats2017.*--convention"):
        evaluate_folders(pred, truth, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    s = evaluate_folders(pred, truth, tmp_path / "ok", convention="brats2023", progress=False)
    assert s["dice"]["WT"] == 1.0 and s["dice"]["TC"] == 1.0 and s["dice"]["ET"] == 0.0


def test_affine_or_grid_differing_from_the_truth_is_one_error(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    victim = _write_pred(tmp_path / "pred", f"{ids[1]}.nii.gz", _seg(root, ids[1]), shifted)
    with pytest.raises(InputError, match=f"{victim}: affine differs from the truth"):
        evaluate_folders(tmp_path / "pred", root, tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval").exists()


def test_truth_folder_with_two_files_for_a_case(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    labels = _label_folder(root, [ids[0], ids[0]], tmp_path / "labels",
                           ["{}.nii.gz", "{}_seg.nii.gz"])
    with pytest.raises(InputError, match=f"case {ids[0]} has several label files"):
        evaluate_folders(tmp_path, labels, tmp_path / "eval", progress=False)


def test_only_predicted_scores_the_cases_with_a_prediction(tmp_path: Path, dataset) -> None:
    root, ids = dataset
    _predictions(root, ids, tmp_path / "pred")
    (tmp_path / "pred" / f"{ids[0]}.nii.gz").unlink()
    _expect_error(tmp_path, root, f"no prediction for case {ids[0]} .*--only-predicted")
    s = evaluate_folders(tmp_path / "pred", root, tmp_path / "eval", only_predicted=True,
                         overlays=0, progress=False)
    assert (s["n_cases"], s["n_truth_cases"], s["skipped_cases"]) == (1, 2, [ids[0]])
    assert s["dice"]["WT"] == 1.0 and s["dice"]["ET"] == 0.0  # case 1: ET missed
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["skipped_cases"] == [ids[0]]
    (tmp_path / "pred" / f"{ids[1]}.nii.gz").unlink()
    with pytest.raises(InputError, match="no prediction in .* for any of the 2 truth cases"):
        evaluate_folders(tmp_path / "pred", root, tmp_path / "e2", only_predicted=True,
                         progress=False)
    assert not (tmp_path / "e2").exists()
