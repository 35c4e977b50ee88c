"""The training loop: epochs, Adam, LR drop on plateau, early stopping, checkpoints, resume.

:func:`train` runs one fold of a data set from a :class:`TrainConfig`; :func:`fit` is the
loop itself and works with any pair of datasets whose items are
``{"image": (4, D, H, W), "target": (3, D, H, W), ...}``. Every step runs inside the
engine's ``swap_activations(model, policy)`` context; ``policy=None`` is its null context,
so swapping on or off is the same code path.

Order of writes at the end of an epoch: log.csv, then best.pt, then last.pt, all atomic.
A kill between them leaves last.pt one epoch behind the log; resuming drops the log rows
that last.pt does not cover and redoes that epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from swapseg import offload
from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.io import write_json
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.recompute import RecomputePolicy, recompute
from swapseg.training import distributed as dist_
from swapseg.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from swapseg.training.config import TrainConfig
from swapseg.training.losses import make_loss
from swapseg.training.runlog import EpochLog, epoch_line, first_step_line
from swapseg.training.swaplog import SwapLog, write_trace
from swapseg.training.validation import validate

__all__ = ["train", "train_all_folds", "fit", "worker_error_message", "build_model",
           "model_kwargs", "resolve_device", "NonFiniteLoss", "TrainState"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and step."""


@dataclass
class TrainState:
    """Progress and early-stopping state, saved in every checkpoint."""
    epoch: int = 0
    """Epochs completed."""
    global_step: int = 0
    """Optimizer steps taken."""
    best_val_loss: float = math.inf
    """Lowest validation loss so far."""
    best_epoch: int = -1
    """Epoch (1-based) of the lowest validation loss."""
    bad_epochs: int = 0
    """Epochs since the validation loss last improved."""
    train_s: float = 0.0
    """Training seconds so far: the sum of the logged epoch seconds (rank 0's clock),
    across resumes. ``max_train_s`` is checked against it."""


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {"in_channels": 4, "out_channels": 3, "base_filters": config.base_filters,
            "depth": config.depth, "dropout": config.dropout}


def build_model(config: TrainConfig) -> Isensee3DUNet:
    torch.manual_seed(config.seed)  # the same initial weights for every fold and rerun
    return Isensee3DUNet(**model_kwargs(config))


def _loaders(train_ds: Dataset, val_ds: Dataset, config: TrainConfig, info: dist_.DistInfo,
             device: torch.device) -> tuple[DataLoader, DataLoader, torch.Generator]:
    gen = torch.Generator()
    sampler = dist_.make_sampler(train_ds, info, config.seed, gen)
    pin = device.type == "cuda"
    train_loader = DataLoader(train_ds, batch_size=config.batch, sampler=sampler,
                              num_workers=config.workers, generator=gen, pin_memory=pin)
    val_loader = DataLoader(val_ds, batch_size=1, shuffle=False,
                            num_workers=min(config.workers, 1), pin_memory=pin)
    return train_loader, val_loader, gen


def _recompute_policy(config: TrainConfig) -> RecomputePolicy | None:
    """The recompute half of an auto-chosen memory plan (None without one)."""
    rec = (config.plan or {}).get("recompute")
    return None if rec is None else RecomputePolicy.from_dict(rec)


def _remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Delete temporaries of atomic writes that a killed run left behind."""
    for name in ("best.pt", "last.pt"):
        for tmp in ckpt_dir.glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
            echo: Callable[[str], None]) -> TrainState:
    ck = load_checkpoint(path)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    state = TrainState(**ck["state"])
    echo(f"resuming from {path} after epoch {state.epoch} (step {state.global_step})")
    return state


def _train_epoch(ctx: _Ctx, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over the training loader; returns loss, timing and data-wait share.

    The whole epoch runs in one swap context (and recompute context): the engine learns
    the unpack order in one step and prefetches by it in the next, so a context per step
    would throw that away. Per-step swap figures are differences of the live counters.
    """
    ctx.ddp_model.train()
    loss_sum, n_samples, wait_s, busy_s = 0.0, 0, 0.0, 0.0
    n_steps = len(ctx.train_loader)
    first = ctx.state.global_step
    trace_epoch = ctx.config.trace_step is not None and \
        first <= ctx.config.trace_step < first + n_steps
    batches = iter(ctx.train_loader)
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}", leave=False, disable=not progress,
               unit="step")
    with offload.swap_activations(ctx.model, ctx.policy, trace=trace_epoch) as stats, \
            recompute(ctx.model, ctx.recompute):
        for step in range(n_steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            before = stats.as_dict()
            loss = _step(ctx, batch, epoch, step)
            t2 = time.perf_counter()
            busy_s += t2 - t1
            wait_s += t1 - t0
            ctx.swaplog.add_step(before, stats.as_dict(), epoch)
            if trace_epoch and ctx.state.global_step == ctx.config.trace_step \
                    and ctx.info.is_main:
                write_trace(stats, (t1 - stats.t0, t2 - stats.t0), ctx.run_dir,
                            ctx.state.global_step)
            ctx.state.global_step += 1
            loss_sum += loss * batch["image"].shape[0]
            n_samples += batch["image"].shape[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return {"train_loss": loss_sum / max(n_samples, 1), "steps": n_steps,
            "data_wait_share": wait_s / max(wait_s + busy_s, 1e-12)}


def _step(ctx: _Ctx, batch: dict[str, Any], epoch: int, step: int) -> float:
    """Forward, loss, backward, optimizer step; NonFiniteLoss before a bad update."""
    image = batch["image"].to(ctx.device, non_blocking=True)  # (B, 4, D, H, W)
    target = batch["target"].to(ctx.device, non_blocking=True)  # (B, 3, D, H, W)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = ctx.loss_fn(ctx.ddp_model(image), target)
    if not torch.isfinite(loss):
        last = ctx.run_dir / "checkpoints" / "last.pt"
        where = f"the last good checkpoint is {last}" if last.exists() else \
            "no checkpoint was written yet"
        raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                            f"(global step {ctx.state.global_step}); stopping: {where}")
    loss.backward()
    ctx.optimizer.step()
    if ctx.device.type == "cuda":  # so that step time is not billed to the next data wait
        torch.cuda.synchronize(ctx.device)
    return loss.item()


@dataclass
class _Ctx:
    """Everything one epoch needs (keeps function signatures short)."""
    config: TrainConfig
    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    train_loader: DataLoader
    device: torch.device
    policy: Any
    recompute: Any
    run_dir: Path
    state: TrainState
    swaplog: SwapLog
    info: dist_.DistInfo


def _out_of_time(state: TrainState, config: TrainConfig) -> bool:
    return config.max_train_s is not None and state.train_s > config.max_train_s


def _end_epoch(ctx: _Ctx, sched: Any, log: EpochLog, row: dict[str, Any]) -> bool:
    """Scheduler, early stopping, log row and checkpoints; True when training should stop."""
    state, config = ctx.state, ctx.config
    val_loss = row["val_loss"]
    sched.step(val_loss)
    improved = math.isfinite(val_loss) and val_loss < state.best_val_loss
    state.epoch += 1
    state.train_s += row["epoch_s"]
    if improved:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, state.epoch, 0
    else:
        state.bad_epochs += 1
    row.update(epoch=state.epoch, best=int(improved))
    if ctx.info.is_main:
        log.append(row)
        ckpt = {"epoch": state.epoch, "global_step": state.global_step,
                "model": ctx.model.state_dict(), "model_kwargs": model_kwargs(config),
                "optimizer": ctx.optimizer.state_dict(), "scheduler": sched.state_dict(),
                "state": asdict(state), "rng": rng_state(), "config": config.to_dict(),
                "val": {k: v for k, v in row.items() if k.startswith("val_")}}
        ckpt_dir = ctx.run_dir / "checkpoints"
        if improved:
            save_checkpoint(ckpt_dir / "best.pt", ckpt)
        save_checkpoint(ckpt_dir / "last.pt", ckpt)
        ctx.swaplog.write(ctx.run_dir / "swap_stats.json")
    return state.bad_epochs >= config.early_stop


def _run_epoch(ctx: _Ctx, val_loader: DataLoader, epoch: int, progress: bool
               ) -> dict[str, Any]:
    """Train one epoch, validate (rank 0, shared with the others): the epoch's log row."""
    t0 = time.perf_counter()
    row = _train_epoch(ctx, epoch, progress)
    window = ctx.config.patch if ctx.config.mode == "patch" else None
    val = validate(ctx.model, val_loader, ctx.loss_fn, ctx.device, window) \
        if ctx.info.is_main else {}
    keys = ["val_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET", "epoch_s"]
    # rank 0's scores and seconds on every rank: all ranks take the same stop decisions
    local = [val.get(k, 0.0) for k in keys[:-1]] + [time.perf_counter() - t0]
    row.update(zip(keys, dist_.broadcast_floats(local, ctx.info), strict=True))
    row.update(lr=ctx.optimizer.param_groups[0]["lr"], **ctx.swaplog.epoch_columns(epoch))
    return row


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset, config: TrainConfig,
        *, resume: bool = False, progress: bool = True,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``model`` on ``train_ds``, validating on ``val_ds`` each epoch; see module doc."""
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
        _remove_stale_temporaries(run_dir / "checkpoints")
    state = _resume(last, model, optimizer, sched, echo) if resume and last.exists() \
        else TrainState()
    log = EpochLog(run_dir / "log.csv")
    if info.is_main:
        log.load(upto_epoch=state.epoch)
    train_loader, val_loader, gen = _loaders(train_ds, val_ds, config, info, device)
    ctx = _Ctx(config, model, dist_.wrap_model(model, info, device), optimizer,
               make_loss(config.loss, config.dice_eps), train_loader, device,
               config.swap, _recompute_policy(config), run_dir, state,
               SwapLog(config.swap), info)
    stop_reason = "max_epochs"
    start_epoch = state.epoch
    for epoch in range(state.epoch, config.max_epochs):
        # a resumed run that had already stopped stays stopped
        if state.bad_epochs >= config.early_stop:
            stop_reason = "early_stop"
            break
        if _out_of_time(state, config):
            stop_reason = "time_limit"
            break
        # Every random stream of an epoch derives from (seed, epoch), so a resumed run
        # repeats the uninterrupted one: sampling order and worker seeds (gen), and
        # dropout and in-process augmentation (the global seed, which
        # BratsVolumes.rng() keys on when workers=0).
        gen.manual_seed(config.seed * 1_000_003 + epoch)
        torch.manual_seed(config.seed * 1_000_003 + epoch + 500_000)
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        row = _run_epoch(ctx, val_loader, epoch, progress)
        stop = _end_epoch(ctx, sched, log, row)
        if info.is_main:
            if epoch == start_epoch and config.swap is not None:
                echo(first_step_line(ctx.swaplog.first_step or {}))
            echo(epoch_line(row, config.max_epochs))
        if stop:
            stop_reason = "early_stop"
            break
        if _out_of_time(state, config):
            stop_reason = "time_limit"
            echo(f"stopping: {state.train_s:.0f} s of training, past the limit of "
                 f"{config.max_train_s:g} s (max_train_s)")
            break
    dist_.barrier(info)
    return {"epochs": state.epoch, "global_step": state.global_step,
            "best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss,
            "stop_reason": stop_reason, "run_dir": str(run_dir),
            "last_row": log.rows[-1] if log.rows else {}}


def _auto_plan(config: TrainConfig, model: nn.Module,
               echo: Callable[[str], None]) -> TrainConfig:
    """``--swap auto``: the planner's fastest plan that fits the memory budget."""
    from swapseg.planner.choose import choose_plan

    device = resolve_device(config.device)
    side = config.patch if config.mode == "patch" else None
    shape = (side,) * 3 if side else config.shape
    plan = choose_plan(model, (config.batch, 4, *shape), "local", config.memory_budget_bytes,
                       tier="cuda" if device.type == "cuda" else "auto")  # CPU: disk or recompute
    echo(f"memory plan for {config.memory_budget_bytes} bytes: {plan.to_dict()}")
    return config.replace(swap=plan.swap, plan=plan.to_dict())


def worker_error_message(exc: BaseException) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker.

    PyTorch re-raises a worker's exception as the same type with the message
    "Caught X in DataLoader worker process N. Original Traceback ... X: <message>".
    """
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    name = type(exc).__name__
    last = [ln for ln in text.strip().splitlines() if f"{name}: " in ln]
    return last[-1].split(f"{name}: ", 1)[1] if last else text.splitlines()[0]


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print, splits_path: str | Path | None = None
          ) -> dict[str, Any]:
    """Train one fold of ``config.data``; writes config.json, splits.json, log.csv, checkpoints."""
    from swapseg.training.crossval import fold_split, load_or_make_splits
    from swapseg.training.datasets import build_datasets, find_training_cases

    run_dir = Path(config.out)
    resolve_device(config.device)  # fail before anything is written
    cases = find_training_cases(config.data)
    splits = load_or_make_splits(splits_path or run_dir / "splits.json", sorted(cases),
                                 config.folds, config.seed)
    split = fold_split(splits, config.fold)
    train_ds, val_ds = build_datasets(config, cases, split)
    model = build_model(config)
    if config.memory_budget_bytes is not None and config.plan is None:
        config = _auto_plan(config, model, echo)
    if int(os.environ.get("RANK", "0")) == 0:  # before init: torchrun's env
        write_json(run_dir / "config.json", config.to_dict())
    echo(f"fold {config.fold}/{config.folds}: {len(split['train'])} train, "
         f"{len(split['val'])} validation, {len(split['test'])} test cases; "
         f"mode {config.mode}, shape {list(config.shape)}, batch {config.batch}, "
         f"swap {'off' if config.swap is None else config.swap.to_dict()}")
    try:
        result = fit(model, train_ds, val_ds, config, resume=resume, progress=progress,
                     echo=echo)
    except InputError as exc:  # a bad case found while loading: name it in one line
        raise InputError(worker_error_message(exc)) from None
    result["split"] = split
    return result


def train_all_folds(config: TrainConfig, *, resume: bool = False, progress: bool = True,
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every fold in turn: RUN/fold<k>/ per fold, one RUN/splits.json and RUN/cache."""
    run_dir = Path(config.out)
    cache = config.cache_dir or str(run_dir / "cache")
    base = config.replace(cache_dir=cache)
    write_json(run_dir / "config.json", base.to_dict())
    folds = []
    for k in range(config.folds):
        res = train(base.replace(fold=k, out=str(run_dir / f"fold{k}")), resume=resume,
                    progress=progress, echo=echo, splits_path=run_dir / "splits.json")
        folds.append({"fold": k, **{key: res[key] for key in
                                    ("epochs", "best_epoch", "best_val_loss", "stop_reason")},
                      "last_row": res["last_row"]})
        write_json(run_dir / "crossval.json", {"folds": folds})
    return {"run_dir": str(run_dir), "folds": folds}
