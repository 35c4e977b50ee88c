"""A training run's fold: its best checkpoint, its test cases and its data folder.

``swapseg predict --run RUN --fold K`` finds, in the layouts that ``swapseg train`` and
``swapseg experiment`` write:

- ``RUN/fold<K>/checkpoints/best.pt`` (``train --all-folds``, or an experiment's
  ``RUN/full`` and ``RUN/patch``);
- ``RUN/checkpoints/best.pt`` when RUN is the single-fold run of fold K (its config.json);

and the fold's test cases in the first ``splits.json`` of RUN, RUN/fold<K> or RUN's parent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapseg.errors import InputError
from swapseg.training.crossval import fold_split

__all__ = ["FoldRun", "find_fold"]


@dataclass(frozen=True)
class FoldRun:
    checkpoint: Path
    test_ids: tuple[str, ...]
    #: the data folder the run trained on (from its config), or None if not recorded.
    data: str | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({type(exc).__name__})") from None


def _checkpoint_dir(run: Path, fold: int) -> Path:
    nested = run / f"fold{fold}"
    if (nested / "checkpoints" / "best.pt").is_file():
        return nested
    single = run / "checkpoints" / "best.pt"
    if single.is_file():
        cfg = run / "config.json"
        saved = _read_json(cfg).get("fold", 0) if cfg.is_file() else 0
        if saved != fold:
            raise InputError(f"--run {run} is the run of fold {saved}, not fold {fold}")
        return run
    raise InputError(f"--run {run}: no fold{fold}/checkpoints/best.pt or "
                     "checkpoints/best.pt (is it a swapseg train --out folder?)")


def find_fold(run: str | Path, fold: int) -> FoldRun:
    """The checkpoint, test case ids and data folder of fold ``fold`` of ``run``."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"--run {run}: no such folder")
    if fold < 0:
        raise InputError(f"--fold must be 0 or more, got {fold}")
    folder = _checkpoint_dir(run, fold)
    splits_file = next((p / "splits.json" for p in (run, folder, run.parent)
                        if (p / "splits.json").is_file()), None)
    if splits_file is None:
        raise InputError(f"--run {run}: no splits.json in it or its parent")
    splits = _read_json(splits_file)
    if not isinstance(splits, dict) or "splits" not in splits:
        raise InputError(f"{splits_file}: not a splits file (no 'splits' key)")
    test = fold_split(splits, fold)["test"]
    cfg = folder / "config.json"
    data = _read_json(cfg).get("data") if cfg.is_file() else None
    return FoldRun(folder / "checkpoints" / "best.pt", tuple(test), data or None)
