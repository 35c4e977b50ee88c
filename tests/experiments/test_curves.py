from pathlib import Path

import pytest

from swapseg.experiments.curves import learning_curves, read_curve

HEADER = "epoch,train_loss,val_loss,val_dice_WT,val_dice_TC,val_dice_ET,lr,epoch_s,steps,best\n"


def _log(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def test_read_curve_accumulates_time_and_steps(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.csv", ["1,0.9,0.8,0.3,0.6,0.0,0.001,10.5,4,1",
                                      "2,0.8,0.7,0.6,0.3,0.3,0.001,9.5,4,1",
                                      "3,0.7,0.75,0.9,0.9,0.9,0.0005,11.0,4,0"])
    c = read_curve(log)
    assert c["t_s"] == [10.5, 20.0, 31.0]
    assert c["steps"] == [4, 8, 12]
    assert c["val_dice"] == pytest.approx([0.3, 0.4, 0.9], abs=1e-12)  # mean of WT/TC/ET
    assert c["val_loss"] == [0.8, 0.7, 0.75]
    assert c["best"] == [1, 1, 0]


def test_learning_curves_write_a_png_and_skip_missing_logs(tmp_path: Path) -> None:
    for mode in ("full", "patch"):
        _log(tmp_path / mode / "fold0" / "log.csv", ["1,0.9,0.8,0.3,0.6,0.0,0.001,10,4,1",
                                                     "2,0.8,0.7,0.6,0.3,0.3,0.001,9,4,1"])
    records = {"full": [{"fold": 0, "best_epoch": 2}, {"fold": 1, "best_epoch": 1}],
               "patch": [{"fold": 0, "best_epoch": 1}]}
    path = learning_curves(tmp_path, records, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))
