"""log.csv: one name per quantity, older logs read under today's names."""

from __future__ import annotations

from swapseg.training.runlog import LOG_COLUMNS, EpochLog, read_log
from swapseg.training.swaplog import SwapLog


def test_an_older_log_is_resumed_under_the_current_column_names(tmp_path):
    path = tmp_path / "log.csv"
    old = [c if c != "swap_peak_saved_bytes" else "swap_peak_device_bytes" for c in LOG_COLUMNS]
    path.write_text(",".join(old) + "\n" + ",".join(["1"] * len(old)) + "\n"
                    + ",".join(["2"] * len(old)) + "\n")
    log = EpochLog(path)
    log.load(upto_epoch=1)
    rows = read_log(path)
    assert list(rows[0]) == list(LOG_COLUMNS) and len(rows) == 1
    assert rows[0]["swap_peak_saved_bytes"] == "1"


def test_the_swap_columns_use_the_planners_name_for_the_saved_peak():
    log = SwapLog(None)
    before = {"swapped": 0, "peak_device_bytes": 0, "by_scope": {}}
    log.add_step(before, {"swapped": 3, "peak_device_bytes": 4096, "by_scope": {}}, epoch=0)
    assert log.first_step["peak_saved_bytes"] == 4096 and log.first_step["swapped"] == 3
    assert log.epoch_columns(0)["swap_peak_saved_bytes"] == 4096.0
