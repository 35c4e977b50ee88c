"""Training: one fold (:func:`train`), every fold (:func:`train_all_folds`), the loop (:func:`fit`).

:func:`train` runs one fold of a data set from a :class:`TrainConfig`; :func:`fit` works
with any pair of datasets whose items are ``{"image": (4, D, H, W), "target": (3, D, H,
W), ...}``; the epochs themselves are ``training.epochs``. Forward, loss and validation
run under the config's precision (``training.precision``), every step under the config's
memory plan.

Before the first step :func:`train` resolves ``--swap auto`` into RUN/plan.json (once:
a resume, and every fold of ``train_all_folds``, reuse it), predicts the step's peak
memory with the planner and stops with one line when it cannot fit; after the first
step it reports the measured peak (``training.planning``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.io import write_json
from swapseg.training import distributed as dist_
from swapseg.training import interrupt
from swapseg.training import planning as plans
from swapseg.training.checkpoint import remove_stale_temporaries, restore, resume_line
from swapseg.training.compiling import compile_model, compile_notice
from swapseg.training.config import TrainConfig
from swapseg.training.datasets import worker_error_message
from swapseg.training.epochs import Ctx, NonFiniteLoss, TrainState, engine, run_epochs
from swapseg.training.losses import make_loss
from swapseg.training.model import build_model, model_kwargs
from swapseg.training.precision import MixedPrecision
from swapseg.training.rundir import nothing_to_train
from swapseg.training.swaplog import SwapLog

__all__ = ["train", "train_all_folds", "fit", "worker_error_message", "build_model",
           "model_kwargs", "resolve_device", "NonFiniteLoss", "TrainState"]


def _loaders(train_ds: Dataset, val_ds: Dataset, config: TrainConfig, info: dist_.DistInfo,
             device: torch.device) -> tuple[DataLoader, DataLoader, torch.Generator]:
    gen = torch.Generator()
    sampler = dist_.make_sampler(train_ds, info, config.seed, gen)
    pin = device.type == "cuda"
    train_loader = DataLoader(train_ds, batch_size=config.batch, sampler=sampler,
                              num_workers=config.workers, generator=gen, pin_memory=pin,
                              worker_init_fn=interrupt.worker_signals)
    val_loader = DataLoader(val_ds, batch_size=1, shuffle=False,
                            num_workers=min(config.workers, 1), pin_memory=pin,
                            worker_init_fn=interrupt.worker_signals)
    return train_loader, val_loader, gen


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
            amp: MixedPrecision, echo: Callable[[str], None]
            ) -> tuple[TrainState, dict[str, Any] | None]:
    """State from ``path``, and the mid-epoch resume point (progress and RNGs) if any."""
    ck = restore(path, model, opt, sched)
    amp.load_state_dict(ck.get("scaler"))
    echo(resume_line(path, ck))
    partial = ck.get("partial")
    return TrainState(**ck["state"]), partial and {"progress": partial, "rng": ck["rng"]}


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset, config: TrainConfig,
        *, resume: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print, plan_path: Path | None = None) -> dict[str, Any]:
    """Train ``model`` on ``train_ds``, validating on ``val_ds`` each epoch; see module doc.
    ``plan_path``: the plan record (plan.json) that the measured first step is added to."""
    run_dir = Path(config.out)
    info = dist_.init_from_env(resolve_device(config.device))
    device = resolve_device(config.device, info.local_rank)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Keras (the reference) drops the LR on the patience-th bad epoch; torch's
    # ReduceLROnPlateau waits for patience+1 bad epochs, hence the -1.
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=max(config.lr_patience - 1, 0))
    last = run_dir / "checkpoints" / "last.pt"
    if info.is_main:
        remove_stale_temporaries(run_dir / "checkpoints")
    amp = MixedPrecision(config.precision, device.type)
    state, partial = _resume(last, model, optimizer, sched, amp, echo) \
        if resume and last.exists() else (TrainState(), None)
    if resume and not last.exists():
        echo(f"--resume: no checkpoint yet ({last} does not exist); starting from the beginning")
    log = _epoch_log(run_dir, state, info)
    train_loader, val_loader, gen = _loaders(train_ds, val_ds, config, info, device)
    ddp_model = dist_.wrap_model(model, info, device)
    ctx = Ctx(config, model, ddp_model, compile_model(ddp_model, config.compile), amp,
              optimizer, make_loss(config.loss, config.dice_eps), train_loader, device,
              run_dir, state, SwapLog(config.swap), info)
    if config.plan is not None and info.is_main:
        ctx.on_first_step = _first_step_report(config, device, plan_path, echo)
    # --compile: one engine context for the run, since each new context registers new
    # module hooks, on which dynamo's guards fail: it would recompile the model every epoch
    run = engine(ctx, config.trace_step is not None) if config.compile else \
        contextlib.nullcontext(None)
    start_epoch = state.epoch
    if config.compile and info.is_main:
        ctx.on_first_step = compile_notice(echo, then=ctx.on_first_step)
    with run as ctx.run_engine:
        stop_reason = run_epochs(ctx, val_loader, sched, log, gen, progress, echo, partial,
                                 last)
    if resume and state.epoch == start_epoch and info.is_main:
        echo(nothing_to_train(state.epoch, config, stop_reason))
    dist_.barrier(info)
    return {"epochs": state.epoch, "global_step": state.global_step,
            "best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss,
            "stop_reason": stop_reason, "run_dir": str(run_dir),
            "last_row": log.rows[-1] if log.rows else {}}


def _epoch_log(run_dir: Path, state: TrainState, info: dist_.DistInfo) -> Any:
    """RUN/log.csv, cut to the epochs the resumed checkpoint covers (rank 0 writes it)."""
    from swapseg.training.runlog import EpochLog

    log = EpochLog(run_dir / "log.csv")
    if info.is_main:
        log.load(upto_epoch=state.epoch)
    return log


def _first_step_report(config: TrainConfig, device: torch.device, plan_path: Path | None,
                       echo: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """What runs after the first step: the measured peak, printed and added to plan.json."""
    if device.type == "cuda":  # the peak of this run, not of the planner's probes
        torch.cuda.reset_peak_memory_stats(device)

    def report(stats: dict[str, Any]) -> None:
        measured = {"run_dir": config.out, "fold": config.fold,
                    **plans.measured_peak(stats, device)}
        echo(plans.record_measured(plan_path, measured))
    return report


def _plan_and_check(config: TrainConfig, model: nn.Module, n_train: int,
                    memory_budget: int | None, plan_path: Path,
                    echo: Callable[[str], None], resume: bool = False) -> TrainConfig:
    """Make the plan concrete for the device, resolve ``--swap auto`` (once: plan.json),
    then predict the step's peak and stop when it cannot fit. plan.json, the record of
    the plan that runs and its prediction, is written only once the plan is known to fit
    (and again when a resumed run was given another plan)."""
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    config = plans.on_device(config, device)
    pred = record = None
    if memory_budget is not None and config.plan is None:
        config, pred, record = plans.resolve_auto(config, memory_budget, plan_path, echo,
                                                  model, replan=resume)
    if pred is None:
        pred = plans.predict(config, model, config.plan, device)
        record = plans.new_record(config, pred, device, plan_path)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plans.check_fits(config, pred, device, math.ceil(n_train / (config.batch * world)), echo)
    plans.check_disk(config.plan, pred, echo)
    if record is not None and int(os.environ.get("RANK", "0")) == 0:
        write_json(plan_path, record)
    return config


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print, splits_path: str | Path | None = None,
          memory_budget: int | None = None, plan_path: str | Path | None = None
          ) -> dict[str, Any]:
    """Train one fold of ``config.data``; writes config.json, splits.json, log.csv,
    checkpoints. With ``memory_budget`` and no ``config.plan`` the planner chooses the
    plan (``--swap auto``) into ``plan_path`` (default RUN/plan.json), or reuses the one
    there."""
    from swapseg.training.crossval import fold_split, make_splits, read_splits
    from swapseg.training.datasets import build_datasets, find_training_cases

    run_dir = Path(config.out)
    resolve_device(config.device)  # fail before anything is written
    cases = find_training_cases(config.data)
    splits_path = Path(splits_path or run_dir / "splits.json")
    ids = sorted(cases)
    # in memory until the step is known to fit: a refused run leaves nothing behind
    splits = read_splits(splits_path, ids, config.folds) if splits_path.exists() else \
        make_splits(ids, config.folds, config.seed)
    split = fold_split(splits, config.fold)
    train_ds, val_ds = build_datasets(config, cases, split)
    model = build_model(config)
    config = _plan_and_check(config, model, len(train_ds), memory_budget,
                             Path(plan_path or run_dir / plans.PLAN_FILE), echo, resume)
    if int(os.environ.get("RANK", "0")) == 0:  # before init: torchrun's env
        if not splits_path.exists():
            write_json(splits_path, splits)
        write_json(run_dir / "config.json", config.to_dict())
    echo(f"fold {config.fold}/{config.folds}: {len(split['train'])} train, "
         f"{len(split['val'])} validation, {len(split['test'])} test cases; "
         f"mode {config.mode}, shape {list(config.shape)}, batch {config.batch}, "
         f"plan {config.plan.name or 'given' if config.plan else 'none'}")
    try:
        result = fit(model, train_ds, val_ds, config, resume=resume, progress=progress,
                     echo=echo, plan_path=Path(plan_path or run_dir / plans.PLAN_FILE))
    except InputError as exc:  # a bad case found while loading: name it in one line
        raise InputError(worker_error_message(exc)) from None
    result["split"] = split
    return result


def train_all_folds(config: TrainConfig, *, resume: bool = False, progress: bool = True,
                    echo: Callable[[str], None] = print, memory_budget: int | None = None
                    ) -> dict[str, Any]:
    """Every fold in turn: RUN/fold<k>/ per fold, one RUN/splits.json, RUN/cache and (with
    ``memory_budget``) one RUN/plan.json that every fold trains with."""
    run_dir = Path(config.out)
    cache = config.cache_dir or str(run_dir / "cache")
    base = config.replace(cache_dir=cache)
    plan_path = run_dir / plans.PLAN_FILE
    if memory_budget is not None and base.plan is None:
        base, _, record = plans.resolve_auto(base, memory_budget, plan_path, echo,
                                             replan=resume)
        if record is not None:
            write_json(plan_path, record)
    write_json(run_dir / "config.json", base.to_dict())
    folds = []
    for k in range(config.folds):
        res = train(base.replace(fold=k, out=str(run_dir / f"fold{k}")), resume=resume,
                    progress=progress, echo=echo, splits_path=run_dir / "splits.json",
                    plan_path=plan_path)
        folds.append({"fold": k, **{key: res[key] for key in
                                    ("epochs", "best_epoch", "best_val_loss", "stop_reason")},
                      "last_row": res["last_row"]})
        write_json(run_dir / "crossval.json", {"folds": folds})
    return {"run_dir": str(run_dir), "folds": folds}
