"""Real BraTS 2018 cases: train briefly (downsampled), predict in the original space, score."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from swapseg.cli import main
from swapseg.predict.inference import predict_cases
from swapseg.training.config import tiny
from swapseg.training.loop import train

# three cases: one trains, one validates, one is predicted (3 folds); small and large tumors
CASES = ("Brats18_2013_20_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA10_628_1")


@pytest.mark.realdata
def test_train_predict_evaluate_real_cases(brats_sample: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for c in CASES:  # links, never copies: the real data must not leave ../shared
        (data / c).symlink_to(brats_sample / c)
    # zoom 3 over a 192^3 window: the 240x240x155 volumes become 64^3 (fits the brain box)
    config = tiny(data=str(data), out=str(tmp_path / "run"), folds=3, shape=(64, 64, 64),
                  zoom=3, max_epochs=2)
    result = train(config, progress=False, echo=lambda _: None)
    (test_case,) = result["split"]["test"]
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    (test_dir / test_case).symlink_to(brats_sample / test_case)

    pred = tmp_path / "pred"
    predict_cases(tmp_path / "run" / "checkpoints" / "best.pt", test_dir, pred, progress=False)
    out = nib.load(pred / f"{test_case}.nii.gz")
    ref = nib.load(brats_sample / test_case / f"{test_case}_seg.nii.gz")
    assert out.shape == (240, 240, 155)
    np.testing.assert_array_equal(out.affine, ref.affine)
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}

    ev = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(test_dir),
                 "--out", str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 1
    for key in ("dice", "sensitivity", "specificity", "hd95_mm"):
        assert set(summary[key]) == {"WT", "TC", "ET"}
        assert all(v is not None and np.isfinite(v) for v in summary[key].values())
    assert (ev / "overlays" / f"{test_case}.png").is_file()
