"""The paper's comparison: full volumes (with swapping) against patches, per fold.

For each fold of one k-fold split, the same model is trained twice with the same protocol
(optimizer, LR drop, early stopping, augmentation, seed) and the same train/validation
cases:

- ``full``: whole volumes, batch 1, with activation swapping (``swap``);
- ``patch``: random ``patch``^3 patches, batch 2, ``patches_per_volume`` per training
  volume per epoch, no swapping (patches fit, as in the paper).

Both are then predicted and scored on the fold's test cases (patch models predict by
sliding windows of their patch size, as their validation ran). :mod:`.stats` turns the
per-case scores and the logs into ``summary.json``, ``report.md`` and the figures.

Layout of ``out``:

    splits.json, cache/              shared by both modes
    full/fold<k>/, patch/fold<k>/    training runs (config.json, log.csv, checkpoints/)
    test/fold<k>/                    links to the fold's test cases
    pred/<mode>/fold<k>/             predictions; eval/<mode>/fold<k>/ their scores
    summary.json, report.md, boxplot_dice.png, overlays/

A fold and mode whose ``record.json`` exists for the same settings is not rerun, and an
interrupted training run resumes from its last checkpoint, so a long experiment can be
restarted with the same command.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swapseg.data.brats import find_cases
from swapseg.devices import available_memory, resolve_device
from swapseg.errors import InputError
from swapseg.evaluation.evaluate import evaluate_folders
from swapseg.experiments import stats
from swapseg.io import write_json
from swapseg.predict.inference import predict_cases
from swapseg.training import planning
from swapseg.training.config import TrainConfig
from swapseg.training.datasets import find_training_cases
from swapseg.training.loop import train
from swapseg.training.model import build_model
from swapseg.training.planning import PLAN_FILE
from swapseg.training.runlog import read_log

__all__ = ["MODES", "default_patch", "default_patches_per_volume",
           "mode_configs", "run_full_vs_patch"]

MODES = ("full", "patch")


def default_patch(shape: tuple[int, ...], depth: int) -> int:
    """The paper's patch/volume ratio, 128/192 = 2/3, rounded down to a multiple of the
    U-Net divisor (never below one divisor): 192 -> 128, 96 -> 64, 64 -> 32 (depth 5)."""
    div = 2 ** (depth - 1)
    return max(div, (2 * min(shape) // 3) // div * div)


def default_patches_per_volume(shape: tuple[int, ...], patch: int) -> int:
    """Patches per training volume per epoch so that a patch epoch sees at least the voxels
    of a full epoch: ceil(volume / patch^3); 192^3 / 128^3 -> 4, so 171 volumes give 342
    batches of 2 (the paper's Keras generator gave 387)."""
    return max(1, math.ceil(math.prod(shape) / patch**3))


def full_plan(swap: str, budget: int | None, device: str) -> tuple[Any, int | None]:
    """(plan, budget to plan for) of the full-volume arm for ``--swap``, as it means in
    every command (``training.planning.swap_plan``): ``none``, ``all``, ``auto`` (for
    ``budget``, or the device's available memory) or a MemoryPlan / SwapPolicy JSON file.
    A budget back means ``auto``: the planner chooses the plan once for the whole
    experiment (``run_full_vs_patch`` writes it to OUT/plan.json)."""
    return planning.swap_plan(swap, budget, resolve_device(device))


def mode_configs(base: TrainConfig, out: Path, fold: int, *, patch: int | None = None,
                 patches_per_volume: int | None = None, plan: Any = None
                 ) -> dict[str, TrainConfig]:
    """The two training configs of one fold; everything but the mode's own fields shared.
    ``plan`` is the full-volume arm's memory plan (see :func:`full_plan`); patches fit
    without one, as in the paper."""
    patch = patch or default_patch(base.shape, base.depth)
    ppv = patches_per_volume or default_patches_per_volume(base.shape, patch)
    common = {"fold": fold, "cache_dir": str(out / "cache"), "batch_size": None}
    full = base.replace(mode="full", out=str(out / "full" / f"fold{fold}"), plan=plan,
                        **common)
    patched = base.replace(mode="patch", patch=patch, patches_per_volume=ppv, plan=None,
                           out=str(out / "patch" / f"fold{fold}"), **common)
    return {"full": full, "patch": patched}


def _resolve_full_plan(base: TrainConfig, out: Path, swap: str, budget: int | None,
                       echo: Callable[[str], None]) -> Any:
    """The full arm's plan, chosen once for every fold (OUT/plan.json, reused on reruns:
    whatever memory the device had then, when no budget was given)."""
    plan, planned_for = full_plan(swap, budget, base.device)
    if planned_for is None:
        return plan
    arm = mode_configs(base, out, 0)["full"]
    arm, _, record = planning.resolve_auto(
        arm, planned_for, out / planning.PLAN_FILE, echo,
        budget_from=None if budget is not None else "the device's available memory")
    if record is not None:
        write_json(out / planning.PLAN_FILE, record)
    return arm.plan


def _check_fits(config: TrainConfig, echo: Callable[[str], None]) -> None:
    """Stop before any training when one arm's step is predicted not to fit."""
    device = resolve_device(config.device)
    pred = planning.predict(config, build_model(config), config.plan, device)
    avail, source = available_memory(device)
    if pred.peak_bytes > avail:
        planning.check_fits(config, pred, device, 1, echo)  # raises with the one line
    echo(f"{config.mode}: one step predicted to peak at {planning.human_bytes(pred.peak_bytes)} of "
         f"{planning.human_bytes(avail)} {source}")


def _test_folder(out: Path, data: Path, fold: int, ids: list[str]) -> Path:
    """``out/test/fold<k>``: links to the fold's test cases, so predict/evaluate see only them."""
    index = {}

    for case in find_cases(data).cases:
        first = case.seg or (next(iter(case.images.values())) if isinstance(case.images, dict)
                             else case.images)
        index[case.case_id] = first.parent
    folder = out / "test" / f"fold{fold}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for cid in ids:
        (folder / cid).symlink_to(index[cid].resolve(), target_is_directory=True)
    return folder


def _same_config(saved: Any, requested: dict[str, Any]) -> bool:
    """Whether a saved config describes the same run; fields added to TrainConfig since it
    was saved take their defaults, a plan saved with tier ``auto`` is the concrete plan it
    ran as, and JSON turns tuples into lists on both sides."""
    try:
        config = TrainConfig.from_dict(dict(saved))
        saved = planning.on_device(config, resolve_device(config.device)).to_dict()
    except (InputError, TypeError, ValueError):
        return False
    return json.loads(json.dumps(saved)) == json.loads(json.dumps(requested))


def _run_mode(config: TrainConfig, out: Path, mode: str, progress: bool,
              echo: Callable[[str], None]) -> dict[str, Any]:
    """Train, predict and score one mode of one fold; returns (and saves) its record."""
    run_dir = Path(config.out)
    requested = config.to_dict()
    record_path = run_dir / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if _same_config(record.get("requested_config", {}), requested):
            echo(f"{mode} fold {config.fold}: done before, reusing {record_path}")
            return record
    saved = run_dir / "requested.json"
    resume = saved.is_file() and _same_config(json.loads(saved.read_text()), requested)
    if run_dir.exists() and not resume:
        raise InputError(f"{run_dir} holds a run with other settings; use another --out")
    write_json(saved, requested)
    t0 = time.perf_counter()

    result = train(config, resume=resume, progress=progress, echo=echo,
                   splits_path=out / "splits.json", plan_path=out / PLAN_FILE)
    train_wall_s = time.perf_counter() - t0
    fold = config.fold
    test = _test_folder(out, Path(config.data), fold, result["split"]["test"])
    t1 = time.perf_counter()
    pred = predict_cases(run_dir / "checkpoints" / "best.pt", test,
                         out / "pred" / mode / f"fold{fold}", device=config.device,
                         progress=progress)
    summary = evaluate_folders(out / "pred" / mode / f"fold{fold}", test,
                               out / "eval" / mode / f"fold{fold}", overlays=0,
                               progress=progress)
    rows = read_log(run_dir / "log.csv")
    record = {
        "mode": mode, "fold": fold, "requested_config": requested, "split": result["split"],
        "epochs": result["epochs"], "best_epoch": result["best_epoch"],
        "stop_reason": result["stop_reason"],
        "iterations_per_epoch": int(rows[-1]["steps"]) if rows else 0,
        "epoch_s": [float(r["epoch_s"]) for r in rows],
        "train_s": sum(float(r["epoch_s"]) for r in rows),
        "train_wall_s": train_wall_s, "predict_s": pred["total_s"],
        "evaluate_wall_s": time.perf_counter() - t1, "window": pred["window"],
        "summary": {k: summary[k] for k in ("n_cases", "dice", "sensitivity", "specificity",
                                            "hd95_mm")},
    }
    write_json(record_path, record)
    return record


def run_full_vs_patch(base: TrainConfig, out: str | Path, *, patch: int | None = None,
                      patches_per_volume: int | None = None, swap: str = "auto",
                      memory_budget: int | None = None,
                      run_folds: int | None = None, overlays: int = 4,
                      command: str = "", progress: bool = True,
                      echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the comparison; writes ``out/summary.json``, ``report.md`` and the figures.

    ``base`` carries the shared protocol (data, shape, zoom, folds, epochs, early stopping,
    model size, device, seed); ``run_folds`` limits the run to the first folds.
    ``swap`` and ``memory_budget`` set the full arm's plan (:func:`full_plan`); with
    ``auto`` it is chosen once, into ``out/plan.json``, for every fold.
    """
    out = Path(out)
    n_folds = base.folds if run_folds is None else run_folds
    if not 1 <= n_folds <= base.folds:
        raise InputError(f"--run-folds must be in 1..{base.folds}, got {run_folds}")

    # check the data and every setting before anything is written
    n_cases = len(find_training_cases(base.data))
    if n_cases < base.folds:
        raise InputError(f"{base.data}: {n_cases} cases cannot be split into {base.folds} folds")
    full_plan(swap, memory_budget, base.device)  # bad values fail before any work
    plan = _resolve_full_plan(base, out, swap, memory_budget, echo)
    first = mode_configs(base, out, 0, patch=patch, patches_per_volume=patches_per_volume,
                         plan=plan)
    for arm in first.values():  # both arms must fit before the first fold trains
        _check_fits(arm, echo)
    echo(f"full-vs-patch: {n_folds} of {base.folds} folds, shape {list(base.shape)} "
         f"zoom {base.zoom}, patch {first['patch'].patch} x{first['patch'].patches_per_volume}"
         f"/volume, max {base.max_epochs} epochs, early stop {base.early_stop}"
         + (f", time limit {base.max_train_s:.0f} s per run" if base.max_train_s else ""))
    t0 = time.perf_counter()
    records: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for fold in range(n_folds):
        configs = mode_configs(base, out, fold, patch=patch,
                               patches_per_volume=patches_per_volume, plan=plan)
        for mode in MODES:
            echo(f"--- fold {fold}, {mode} ---")
            records[mode].append(_run_mode(configs[mode], out, mode, progress, echo))
    settings = {"data": base.data, "folds": base.folds, "run_folds": n_folds,
                "shape": list(base.shape), "zoom": base.zoom,
                "patch": first["patch"].patch,
                "patches_per_volume": first["patch"].patches_per_volume,
                "swap": swap, "full_plan": (None if first["full"].plan is None
                                            else first["full"].plan.to_dict()),
                "memory_budget_bytes": memory_budget,
                "max_epochs": base.max_epochs, "early_stop": base.early_stop,
                "lr_patience": base.lr_patience, "max_train_s": base.max_train_s,
                "base_filters": base.base_filters,
                "depth": base.depth, "seed": base.seed, "device": base.device}
    return stats.write_outputs(out, records, settings, command=command,
                               wall_s=time.perf_counter() - t0, overlays=overlays)
