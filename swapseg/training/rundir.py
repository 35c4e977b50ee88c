"""The run folder: what makes a folder a run, clearing one, and reading its config back.

``config.json`` stores ``data``, ``out`` and ``cache_dir`` as absolute paths, so ``--resume``
works from any directory. Runs saved before that stored them as typed on the command line,
relative to the directory training started in; :func:`absolute_paths` recovers that
directory from the saved ``out``: if the run folder's absolute path ends with the saved
``out`` (``runs/full`` in ``/home/me/runs/full``), training started in what comes before it
(``/home/me``). If the folder was moved or renamed since, the current directory is used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["RUN_FILES", "holds_run", "clear_run", "absolute_paths", "nothing_to_train"]

#: What ``swapseg train`` writes into a run folder (``cache/`` is kept by ``--overwrite``:
#: its entries are keyed by their sources and shape, so a new run may reuse them).
RUN_FILES = ("config.json", "splits.json", "plan.json", "log.csv", "swap_stats.json",
             "timeline.json", "timeline.png", "crossval.json", "checkpoints")


def holds_run(folder: str | Path) -> bool:
    """True when ``folder`` (or one of its ``fold<k>/``) holds files of a training run."""
    folder = Path(folder)
    if any((folder / name).exists() for name in RUN_FILES):
        return True
    return any(holds_run(f) for f in folder.glob("fold[0-9]*") if f.is_dir())


def clear_run(folder: str | Path) -> None:
    """Remove the run files of ``folder`` and its ``fold<k>/`` (``--overwrite``)."""
    folder = Path(folder)
    for name in RUN_FILES:
        p = folder / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for fold in folder.glob("fold[0-9]*"):
        if fold.is_dir():
            clear_run(fold)
            if not any(fold.iterdir()):
                fold.rmdir()


def absolute_paths(saved: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """``saved`` (a config.json) with ``out`` = ``run_dir`` and absolute data/cache paths."""
    run_dir = Path(os.path.abspath(run_dir))
    start = _start_dir(saved.get("out"), run_dir)
    out = dict(saved)
    for key in ("data", "cache_dir"):
        value = out.get(key)
        if value and not os.path.isabs(value):
            out[key] = os.path.normpath(os.path.join(start, value))
    out["out"] = str(run_dir)
    return out


def _start_dir(saved_out: Any, run_dir: Path) -> Path:
    """The directory an old run started in (see the module doc)."""
    if saved_out and not os.path.isabs(saved_out):
        parts = Path(os.path.normpath(saved_out)).parts
        if parts and ".." not in parts and run_dir.parts[-len(parts):] == parts:
            return Path(*run_dir.parts[:-len(parts)])
    return Path.cwd()


def nothing_to_train(epochs: int, config: Any, stop_reason: str) -> str:
    """The line a resumed run prints when it had nothing left to do."""
    if stop_reason == "early_stop":
        why = (f"it stopped early after {epochs} epochs ({config.early_stop} without "
               "validation improvement)")
    elif stop_reason == "time_limit":
        why = (f"its {config.max_train_s:g} s time limit is spent; give a larger "
               "--time-limit to train on")
    else:
        why = (f"it has {epochs} of {config.max_epochs} epochs; give --epochs N with N > "
               f"{epochs} to train on")
    return f"--resume: nothing to train in {config.out}: {why}"
