"""report: summary statistics by hand, display classes, figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from swapseg.evaluation import report


def _rows() -> list[dict]:
    rows = []
    for i, dice_wt in enumerate((0.5, 0.7, 0.9, float("nan"))):
        row = {"case_id": f"c{i}"}
        for col in report.columns():
            row[col] = 1.0
        row["dice_WT"] = dice_wt
        row["hd95_mm_ET"] = float("nan")
        rows.append(row)
    return rows


def test_summarize_by_hand() -> None:
    s = report.summarize(_rows())
    assert s["n_cases"] == 4
    assert s["dice"]["WT"] == pytest.approx(0.7)            # NaN left out
    assert s["median"]["dice"]["WT"] == pytest.approx(0.7)
    assert s["std"]["dice"]["WT"] == pytest.approx(0.2)     # sqrt((0.04 + 0 + 0.04) / 2)
    assert s["n_nan"]["dice"]["WT"] == 1
    assert s["dice"]["TC"] == 1.0 and s["std"]["dice"]["TC"] == 0.0
    assert s["hd95_mm"]["ET"] is None and s["n_nan"]["hd95_mm"]["ET"] == 4
    assert report.summarize(_rows()[:1])["std"]["dice"]["WT"] is None  # one case: no spread


def test_label_classes() -> None:
    wt = np.array([[[0, 1, 1, 1]]], bool)
    tc = np.array([[[0, 0, 1, 1]]], bool)
    et = np.array([[[0, 0, 0, 1]]], bool)
    np.testing.assert_array_equal(report.label_classes(np.stack([wt, tc, et])),
                                  [[[0, 1, 2, 3]]])


def test_csv_columns_and_nan(tmp_path: Path) -> None:
    report.write_per_case_csv(tmp_path / "x.csv", _rows())
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["case_id", "dice_WT", "dice_TC"]
    assert lines[0].split(",")[-1] == "hd95_mm_ET"
    assert lines[4].split(",")[1] == "nan" and len(lines) == 5


def test_figures(tmp_path: Path) -> None:
    groups = {"full": {"WT": [0.8, 0.9], "TC": [0.6, math.nan], "ET": []},
              "patch": {"WT": [0.7, 0.75], "TC": [0.5, 0.6], "ET": [0.4]}}
    report.boxplot(groups, tmp_path / "box.png")
    assert (tmp_path / "box.png").stat().st_size > 1000
    flair = np.random.default_rng(0).random((13, 11, 9)).astype(np.float32)
    truth = np.zeros((3, 13, 11, 9), bool)
    truth[0, 3:9, 3:8, 6] = True
    truth[1, 4:7, 4:6, 6] = True
    k = report.overlay(flair, truth, np.zeros_like(truth), tmp_path / "ov.png")
    assert k == 6  # the slice with the most truth tumor
    assert (tmp_path / "ov.png").stat().st_size > 1000
