"""``swapseg demo``: synthetic data -> full-volume training with swapping -> report.

The whole pipeline of the project on a laptop CPU in minutes:

1. write BraTS-like phantoms (``swapseg.data.synthetic``) to ``<out>/data``;
2. split them 60/20/20 (fold 0 of 5) and train the Isensee U-Net on whole volumes with
   every activation swapped (to disk on a CPU: ``config.SWAP_ALL``) to ``<out>/run``;
3. predict the held-out test cases from the best checkpoint (``<out>/predictions``) and
   score them (``swapseg.evaluation``): ``summary.json``, ``per_case.csv``,
   ``boxplot.png``, ``overlays/`` land in ``<out>``, beside copies of ``log.csv`` and
   ``swap_stats.json`` and ``demo.json`` (timings, settings, environment).

The demo stops by epochs (25, or ``epochs``), not by time: a busy machine makes it
slower, not worse: it trains every epoch, as the README's figure did. It prints the time to
expect before it starts; ``time_limit`` (``--time-limit``) adds a guard on request.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from swapseg.envinfo import environment
from swapseg.errors import InputError
from swapseg.io import write_json
from swapseg.training.config import TrainConfig, demo

__all__ = ["run_demo", "demo_config", "DEFAULT_OUT", "DEFAULT_CASES"]

DEFAULT_OUT = "swapseg-demo"
DEFAULT_CASES = 20
"""20 phantoms: 12 train, 4 validation, 4 held-out test (fold 0 of 5)."""
QUIET_EPOCH_S = (14.0, 25.0)
"""Seconds per epoch of the default demo on a quiet 2-core CPU, disk tier (the range of
the run in docs/training.md, "swapseg demo"): the basis of the time printed up front."""


def demo_config(out: Path, shape: int | None = None, epochs: int | None = None,
                quick: bool = False, time_limit: float | None = None) -> TrainConfig:
    """The training config of the demo; ``quick`` is a smoke-test version (seconds).
    It stops by epochs: the preset's training-time guard is off unless ``time_limit``
    (seconds; 0 or None: none) asks for one."""
    changes: dict[str, Any] = {"data": str(out / "data"), "out": str(out / "run"),
                               "max_train_s": time_limit or None}
    if quick:
        changes.update(shape=(32, 32, 32), base_filters=4, depth=3, max_epochs=2, workers=0)
    if shape is not None:
        changes["shape"] = (shape,) * 3
    if epochs is not None:
        changes["max_epochs"] = epochs
    return demo(**changes)


def expected_time(config: TrainConfig, quick: bool) -> str:
    """What the demo says up front about its length."""
    guard = f", or fewer when --time-limit {config.max_train_s:g} s passes" \
        if config.max_train_s else ""
    plan = f"{config.max_epochs} epochs at {config.shape[0]}^3{guard}"
    if quick:
        return f"{plan}: a pipeline check, well under a minute"
    if config.shape != demo().shape or config.max_epochs != demo().max_epochs \
            or config.compile:
        return f"{plan}"
    low, high = (config.max_epochs * s / 60 for s in QUIET_EPOCH_S)
    return (f"{plan}: expect {low:.0f}-{high:.0f} min on a quiet 2-core CPU "
            "(a busy one takes longer; it still trains every epoch)")


def choose_threads() -> int:
    """Intra-op threads for the demo: all cores, or 1 when the CPU is already busy.

    Spin-waiting OpenMP threads that lose their core to other processes stall each other;
    one thread cannot (measured 2026-11-29: benchmarks/results/2026-11-29-demo-threads-cpu.md).
    """
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] > cores if hasattr(os, "getloadavg") else False
    return 1 if busy else torch.get_num_threads()


def _test_folder(out: Path, data: Path, test_ids: list[str]) -> Path:
    """``<out>/test``: links to the held-out cases, so predict/evaluate see only them."""
    test = out / "test"
    shutil.rmtree(test, ignore_errors=True)
    test.mkdir(parents=True)
    for cid in test_ids:
        (test / cid).symlink_to((data / cid).resolve(), target_is_directory=True)
    return test


def run_demo(out: str | Path = DEFAULT_OUT, cases: int = DEFAULT_CASES,
             shape: int | None = None, epochs: int | None = None, quick: bool = False,
             seed: int = 0, time_limit: float | None = None, progress: bool = True,
             echo: Callable[[str], None] = print, precision: str = "32",
             compile: bool = False) -> dict[str, Any]:
    """Run the demo into ``out``; returns the evaluation summary (with a ``demo`` entry).
    ``precision`` and ``compile`` are the TrainConfig fields of the same names."""
    from swapseg.data.synthetic import synthesize
    from swapseg.evaluation.evaluate import evaluate_folders
    from swapseg.predict.inference import predict_cases
    from swapseg.training.loop import train

    if cases < 5:
        raise InputError(f"--cases {cases}: the demo needs at least 5 (a 5-fold split)")
    threads = choose_threads()
    torch.set_num_threads(threads)
    out = Path(out)
    config = demo_config(out, shape, 2 if quick and epochs is None else epochs, quick,
                         time_limit)
    config = config.replace(seed=seed, precision=precision, compile=compile)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    data = out / "data"
    for old in ("data", "run", "test", "predictions", "overlays"):  # a fresh run each time
        shutil.rmtree(out / old, ignore_errors=True)
    echo(f"demo: {expected_time(config, quick)}")
    echo(f"demo: {threads} torch thread(s); writing {cases} synthetic cases of "
         f"{config.shape[0]}^3 to {data}")
    synthesize(data, cases, config.shape, seed=seed)
    times["synth_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    result = train(config, progress=progress, echo=echo)
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    test = _test_folder(out, data, result["split"]["test"])
    best = Path(config.out) / "checkpoints" / "best.pt"
    predict_cases(best, test, out / "predictions", device=config.device, progress=progress)
    summary = evaluate_folders(out / "predictions", test, out, progress=progress)
    times["evaluate_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    for name in ("log.csv", "swap_stats.json"):
        src = Path(config.out) / name
        if src.exists():
            shutil.copy2(src, out / name)
    info = {"wall_s": times, "cases": cases, "torch_threads": threads, "split": result["split"],
            "best_epoch": result["best_epoch"], "epochs": result["epochs"],
            "stop_reason": result["stop_reason"], "config": config.to_dict(),
            "swap_average_step": _swap_average(out / "swap_stats.json"),
            "environment": environment()}
    write_json(out / "demo.json", info)
    summary["demo"] = {k: info[k] for k in ("wall_s", "cases", "best_epoch", "epochs")}
    write_json(out / "summary.json", summary)
    return summary


def _swap_average(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("average_step") or {}
