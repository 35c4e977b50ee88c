"""``log.csv``: one row per epoch, rewritten atomically after every epoch; and the console
line printed for each epoch.

Rewriting the whole (small) file each epoch means a kill never leaves a torn row, and a
resumed run can drop the rows of epochs that its checkpoint does not cover.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from swapseg.io import write_text

__all__ = ["EpochLog", "LOG_COLUMNS", "epoch_line", "first_step_line", "read_log"]

#: Column order of log.csv; units are in the names.
LOG_COLUMNS = (
    "epoch", "train_loss", "val_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET",
    "lr", "epoch_s", "data_wait_share", "steps", "skipped_steps", "best",
    "swap_swapped", "swap_bytes_out", "swap_peak_saved_bytes", "swap_wait_s",
)
#: Columns of older logs, by their name now.
_RENAMED = {"swap_peak_device_bytes": "swap_peak_saved_bytes"}


def read_log(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``log.csv``, as strings keyed by column."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class EpochLog:
    """The rows of log.csv, kept in memory and written whole after each append."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def load(self, upto_epoch: int) -> None:
        """Read existing rows with ``epoch <= upto_epoch`` (a resumed run's checkpoint)."""
        self.rows = []
        if not self.path.exists():
            return
        self.rows = [{_RENAMED.get(k, k): v for k, v in r.items()}
                     for r in read_log(self.path) if int(r["epoch"]) <= upto_epoch]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: _fmt(row.get(k, "")) for k in LOG_COLUMNS})
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def first_step_line(d: dict[str, Any]) -> str:
    """The console line after the first swapped step: what the engine moved."""
    return (f"swap, first step: {d.get('swapped', 0)} of {d.get('packed', 0)} saved tensors "
            f"swapped ({d.get('deduplicated', 0)} deduplicated), "
            f"{d.get('bytes_out', 0) / 2**20:.1f} MiB out, peak resident "
            f"{d.get('peak_saved_bytes', 0) / 2**20:.1f} MiB, wait {d.get('wait_s', 0):.3f} s")


def epoch_line(row: dict[str, Any], max_epochs: int) -> str:
    """The console line of one epoch (``*``: the validation loss improved)."""
    swap = ""
    if row.get("swap_swapped"):
        swap = (f" | swap {row['swap_swapped']} tensors "
                f"{row['swap_bytes_out'] / 2**20:.1f} MiB/step wait {row['swap_wait_s']:.3f}s")
    if row.get("skipped_steps"):  # fp16's GradScaler found inf/nan gradients
        swap += f" | {row['skipped_steps']} step(s) skipped"
    return (f"epoch {row['epoch']}/{max_epochs} loss {row['train_loss']:.4f} "
            f"val {row['val_loss']:.4f} dice WT {row['val_dice_WT']:.3f} "
            f"TC {row['val_dice_TC']:.3f} ET {row['val_dice_ET']:.3f} "
            f"lr {row['lr']:.2e} {row['epoch_s']:.1f}s data-wait "
            f"{100 * row['data_wait_share']:.1f}%{swap}{' *' if row.get('best') else ''}")
