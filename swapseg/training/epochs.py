"""The epochs of one training run: steps, validation, LR drop, early stop, stop requests.

:func:`run_epochs` is the epoch loop of ``training.loop.fit``: every random stream of an
epoch derives from (seed, epoch), so a resumed run repeats the uninterrupted one. Every
step runs inside the engine's swap and recompute contexts for the run's memory plan;
a plan of None is their null context, so swapping on or off is the same code path.
After the first step of a run (or of a resume) ``Ctx.on_first_step`` sees the engine's
counters, so the caller can report the measured peak beside the predicted one.

Order of writes at the end of an epoch: log.csv, then best.pt, then last.pt, all atomic.
A kill between them leaves last.pt one epoch behind the log; resuming drops the log rows
that last.pt does not cover and redoes that epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from swapseg import offload
from swapseg.offload.recompute import recompute
from swapseg.training import distributed as dist_
from swapseg.training import interrupt
from swapseg.training.checkpoint import EpochProgress, rng_state, save_checkpoint, set_rng_state
from swapseg.training.config import TrainConfig
from swapseg.training.model import model_kwargs
from swapseg.training.precision import MixedPrecision
from swapseg.training.runlog import EpochLog, epoch_line, first_step_line
from swapseg.training.swaplog import SwapLog, write_trace
from swapseg.training.validation import validate

__all__ = ["NonFiniteLoss", "TrainState", "Ctx", "engine", "run_epochs"]


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
    skipped_steps: int = 0
    """Optimizer steps the fp16 GradScaler skipped (inf/nan gradients), across resumes."""


@contextlib.contextmanager
def engine(ctx: Ctx, trace: bool) -> Iterator[Any]:
    """The run's memory plan as one context (``apply_plan``'s, with the engine's trace
    option for ``--trace-step``)."""
    plan = ctx.config.plan
    with offload.swap_activations(ctx.model, plan and plan.swap, trace=trace) as stats, \
            recompute(ctx.model, plan and plan.recompute):
        yield stats


def _train_epoch(ctx: Ctx, epoch: int, progress: bool,
                 partial: dict[str, Any] | None = None) -> dict[str, float]:
    """One pass over the training loader; returns loss, timing and data-wait share.

    ``partial`` resumes an epoch that stopped mid-way: the batches of the steps it took
    are loaded again and dropped (which replays the data RNGs exactly), then the RNG
    states saved after its last step are restored.

    The whole epoch runs in one swap context (and recompute context): the engine learns
    the unpack order in one step and prefetches by it in the next, so a context per step
    would throw that away. Per-step swap figures are differences of the live counters.
    """
    ctx.ddp_model.train()
    prog = EpochProgress(**partial["progress"]) if partial else EpochProgress()
    skipped = 0
    n_steps = len(ctx.train_loader)
    first = ctx.state.global_step - prog.steps
    trace_epoch = ctx.config.trace_step is not None and \
        first <= ctx.config.trace_step < first + n_steps
    batches = iter(ctx.train_loader)
    for _ in range(prog.steps):
        next(batches)
    if partial:
        set_rng_state(partial["rng"])
    resumed_s = prog.elapsed_s
    t_start = time.perf_counter() - resumed_s
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}", leave=False, disable=not progress,
               unit="step")
    epoch_engine = engine(ctx, trace_epoch) if ctx.run_engine is None else \
        contextlib.nullcontext(ctx.run_engine)
    with epoch_engine as stats:
        for step in range(prog.steps, n_steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            before = stats.as_dict()
            loss, stepped = _step(ctx, batch, epoch, step)
            skipped += not stepped
            ctx.state.skipped_steps += not stepped  # a mid-epoch checkpoint counts it too
            t2 = time.perf_counter()
            ctx.swaplog.add_step(before, stats.as_dict(), epoch)
            if ctx.on_first_step is not None:
                ctx.on_first_step(stats.as_dict())
                ctx.on_first_step = None
            if trace_epoch and ctx.state.global_step == ctx.config.trace_step \
                    and ctx.info.is_main:
                write_trace(stats, ctx.run_dir, ctx.state.global_step)
            ctx.state.global_step += 1
            prog.add(loss, batch["image"].shape[0], t1 - t0, t2 - t1)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            prog.elapsed_s = time.perf_counter() - t_start
            interrupt.after_step(ctx.state.global_step, prog)
    bar.close()
    return {"train_loss": prog.loss_sum / max(prog.samples, 1), "steps": n_steps,
            "data_wait_share": prog.wait_s / max(prog.wait_s + prog.busy_s, 1e-12),
            "skipped_steps": skipped, "resumed_s": resumed_s}


def _step(ctx: Ctx, batch: dict[str, Any], epoch: int, step: int) -> tuple[float, bool]:
    """Forward and loss under autocast, backward, optimizer step: (loss, stepped).

    NonFiniteLoss before a bad update; ``stepped`` is False when fp16's GradScaler skipped
    the update (inf/nan gradients, which it expects now and then and handles)."""
    image = batch["image"].to(ctx.device, non_blocking=True)  # (B, 4, D, H, W)
    target = batch["target"].to(ctx.device, non_blocking=True)  # (B, 3, D, H, W)
    ctx.optimizer.zero_grad(set_to_none=True)
    with ctx.amp.autocast():
        loss = ctx.loss_fn(ctx.forward_model(image), target)
    if not torch.isfinite(loss):
        last = ctx.run_dir / "checkpoints" / "last.pt"
        where = f"the last good checkpoint is {last}" if last.exists() else \
            "no checkpoint was written yet"
        raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                            f"(global step {ctx.state.global_step}); stopping: {where}")
    stepped = ctx.amp.backward_step(loss, ctx.optimizer)
    if ctx.device.type == "cuda":  # so that step time is not billed to the next data wait
        torch.cuda.synchronize(ctx.device)
    return loss.item(), stepped


@dataclass
class Ctx:
    """Everything one epoch needs (keeps function signatures short)."""
    config: TrainConfig
    model: nn.Module
    ddp_model: nn.Module
    forward_model: nn.Module  # ddp_model, or torch.compile(ddp_model) with config.compile
    amp: MixedPrecision
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    train_loader: DataLoader
    device: torch.device
    run_dir: Path
    state: TrainState
    swaplog: SwapLog
    info: dist_.DistInfo
    run_engine: Any = None  # the run-wide engine's stats under --compile (see fit)
    on_first_step: Callable[[dict[str, Any]], None] | None = None
    """Called once, with the engine's counters, after the first step this process takes."""


def _out_of_time(state: TrainState, config: TrainConfig) -> bool:
    return config.max_train_s is not None and state.train_s > config.max_train_s


def _end_epoch(ctx: Ctx, sched: Any, log: EpochLog, row: dict[str, Any]) -> bool:
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
        ckpt = _checkpoint(ctx, sched, val={k: v for k, v in row.items() if k.startswith("val_")})
        ckpt_dir = ctx.run_dir / "checkpoints"
        if improved:
            save_checkpoint(ckpt_dir / "best.pt", ckpt)
        save_checkpoint(ckpt_dir / "last.pt", ckpt)
        ctx.swaplog.write(ctx.run_dir / "swap_stats.json")
    return state.bad_epochs >= config.early_stop


def _checkpoint(ctx: Ctx, sched: Any, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict (see swapseg.training.checkpoint); ``extra``: val or partial."""
    state = ctx.state
    return {"epoch": state.epoch, "global_step": state.global_step,
            "model": ctx.model.state_dict(), "model_kwargs": model_kwargs(ctx.config),
            "optimizer": ctx.optimizer.state_dict(), "scheduler": sched.state_dict(),
            "state": asdict(state), "rng": rng_state(), "config": ctx.config.to_dict(),
            "scaler": ctx.amp.state_dict(), **extra}


def _stopped(ctx: Ctx, sched: Any, req: interrupt.StopRequested,
             last: Path) -> interrupt.Interrupted:
    """Write the mid-epoch checkpoint of a stop request; the exception that ends the run."""
    where = f"after epoch {ctx.state.epoch}"
    if req.progress is not None:
        where = f"at epoch {ctx.state.epoch + 1}, step {req.progress.steps}"
        if ctx.info.is_main:
            save_checkpoint(last, _checkpoint(ctx, sched, partial=req.progress.to_dict()))
    return interrupt.Interrupted(req.signum, last, where)


def _run_epoch(ctx: Ctx, val_loader: DataLoader, epoch: int, progress: bool,
               partial: dict[str, Any] | None) -> dict[str, Any]:
    """Train one epoch, validate (rank 0, shared with the others): the epoch's log row."""
    t0 = time.perf_counter()
    row = _train_epoch(ctx, epoch, progress, partial)
    t0 -= row.pop("resumed_s")  # an epoch resumed mid-way counts its time before the stop
    window = ctx.config.patch if ctx.config.mode == "patch" else None
    with ctx.amp.autocast():  # validation sees what training sees
        val = validate(ctx.model, val_loader, ctx.loss_fn, ctx.device, window) \
            if ctx.info.is_main else {}
    keys = ["val_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET", "epoch_s"]
    # rank 0's scores and seconds on every rank: all ranks take the same stop decisions
    local = [val.get(k, 0.0) for k in keys[:-1]] + [time.perf_counter() - t0]
    row.update(zip(keys, dist_.broadcast_floats(local, ctx.info), strict=True))
    row.update(lr=ctx.optimizer.param_groups[0]["lr"], **ctx.swaplog.epoch_columns(epoch))
    return row


def run_epochs(ctx: Ctx, val_loader: DataLoader, sched: Any, log: EpochLog,
            gen: torch.Generator, progress: bool, echo: Callable[[str], None],
            partial: dict[str, Any] | None, last: Path) -> str:
    """The epoch loop of :func:`fit`; returns why it stopped."""
    state, config, info = ctx.state, ctx.config, ctx.info
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
        if isinstance(ctx.train_loader.sampler, DistributedSampler):
            ctx.train_loader.sampler.set_epoch(epoch)
        try:
            row = _run_epoch(ctx, val_loader, epoch, progress, partial)
            partial = None
            stop = _end_epoch(ctx, sched, log, row)
            if info.is_main:
                if epoch == start_epoch and config.swap is not None:
                    echo(first_step_line(ctx.swaplog.first_step or {}))
                echo(epoch_line(row, config.max_epochs))
            interrupt.after_epoch()
        except interrupt.StopRequested as req:
            raise _stopped(ctx, sched, req, last) from None
        except RuntimeError as exc:
            interrupt.raise_if_worker_lost(exc, last)
            raise
        if stop:
            stop_reason = "early_stop"
            break
        if _out_of_time(state, config):
            stop_reason = "time_limit"
            echo(f"stopping: {state.train_s:.0f} s of training, past the limit of "
                 f"{config.max_train_s:g} s (max_train_s)")
            break
    return stop_reason


