"""A run's memory plan: resolved once, predicted before the first step, measured after it.

- :func:`resolve_auto` turns ``--swap auto --memory-budget SIZE`` into one
  :class:`~swapseg.offload.policy.MemoryPlan` with ``choose_plan`` (the run's real loss,
  input shape and autocast dtype) and writes it to ``plan.json``, the run's or the
  experiment's. A ``plan.json`` already there is reused, so every fold and every
  ``--resume`` trains with the same plan.
- :func:`predict` traces one step of the actual model (FakeTensorMode: no memory) and
  simulates it under the plan: its peak memory and its time.
- :func:`check_fits` compares that peak with what the device has free (CUDA's
  ``mem_get_info``, or ``MemAvailable`` of /proc/meminfo on a CPU) and stops with one line
  when it cannot fit; on a CPU it prints the predicted time per epoch. The disk tier's
  folder is checked for the bytes the plan writes (:func:`check_disk`).
- :func:`measured_peak` is what the run saw after its first step: the engine's accounting,
  and ``torch.cuda.max_memory_allocated`` on CUDA or the process's peak RSS on a CPU;
  it is appended to ``plan.json`` beside the prediction.

Times before a run use a quick profile (``measure_local`` probes only: a 512x512 matmul
for FLOP/s, a 64 MiB element-wise pass for memory bandwidth, a 64 MiB copy), not the
model's calibrated step, which costs a real step; the ``--swap auto`` plan itself is
chosen on the calibrated profile. The environment variable ``SWAPSEG_AVAILABLE_BYTES``
(a size, e.g. ``2GiB``) replaces the free memory that is read, for tests and for users
who know better.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.io import read_json_record, write_json
from swapseg.offload.policy import MemoryPlan
from swapseg.sizes import parse_bytes
from swapseg.training.config import TrainConfig
from swapseg.training.losses import make_loss
from swapseg.training.precision import autocast_dtype

__all__ = ["PLAN_FILE", "AVAILABLE_ENV", "Prediction", "input_shape", "predict",
           "resolve_auto", "read_plan_file", "check_fits", "data_bytes", "check_disk",
           "available_memory", "plan_line", "measured_peak", "record_measured",
           "human_bytes"]

PLAN_FILE = "plan.json"
AVAILABLE_ENV = "SWAPSEG_AVAILABLE_BYTES"
#: How a prediction from the quick profile names its source.
QUICK = "quick probes (matmul FLOP/s, memory bandwidth)"
#: Predicted epochs longer than this on a CPU are announced as a warning.
SLOW_EPOCH_S = 600.0


def human_bytes(n: float) -> str:
    """``7.40 GiB``, ``512.00 MiB``: binary units, two decimals."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class Prediction:
    """The planner's simulation of one training step under a plan."""
    peak_bytes: int
    """Device memory at the step's peak: parameters, gradients, Adam state, live saved
    tensors and the working set."""
    peak_saved_bytes: int
    """Saved tensors resident at the peak (what the engine's accounting measures)."""
    step_s: float
    """Predicted seconds of one step under the plan."""
    baseline_step_s: float
    """Predicted seconds of the same step keeping everything resident."""
    swapped_tensors: int
    swapped_bytes: int
    """Bytes the plan moves off the device per step (the disk tier writes this many)."""
    recomputed_tensors: int
    input_shape: tuple[int, ...]
    profile: str
    """Which device profile the times come from."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def input_shape(config: TrainConfig) -> tuple[int, ...]:
    """(B, 4, D, H, W) of one training step: the patch in patch mode, else the volume."""
    spatial = (config.patch,) * 3 if config.mode == "patch" else tuple(config.shape)
    return (config.batch, 4, *spatial)


def _trace_loss(config: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The run's training loss on the model's output, against an all-zero target of the
    output's shape (the target's values change no tensor's size)."""
    loss = make_loss(config.loss, config.dice_eps)
    return lambda out: loss(out, torch.zeros_like(out))


def _tier(device: torch.device) -> str:
    """The copy path a plan on ``device`` uses: CUDA's link, or on a CPU ``auto`` (the
    planner's choice of the tier that frees CPU memory)."""
    return "cuda" if device.type == "cuda" else "auto"


@functools.lru_cache(maxsize=4)
def _quick_profile(device_type: str) -> Any:
    from swapseg.planner.devices import measure_local

    # probes only (no model step); "host" so that no disk probe runs before every run
    return measure_local(None, tier="cuda" if device_type == "cuda" else "host")


def predict(config: TrainConfig, model: nn.Module, plan: MemoryPlan | None,
            device: torch.device, profile: Any = None) -> Prediction:
    """Trace one step of ``model`` as ``config`` trains it and simulate it under ``plan``
    on ``profile`` (default: the quick profile of ``device``)."""
    from swapseg.planner.simulate import simulate
    from swapseg.planner.trace import trace_step

    shape = input_shape(config)
    prof = profile if profile is not None else _quick_profile(device.type)
    tr = trace_step(model, shape, _trace_loss(config),
                    autocast_dtype=autocast_dtype(config.precision))
    plan = plan or MemoryPlan()
    r = simulate(tr, prof, plan.swap, plan.recompute)
    base = simulate(tr, prof) if plan.swap or plan.recompute else r
    source = "calibrated local profile" if profile is not None else QUICK
    return Prediction(r.peak_bytes, r.peak_saved_bytes, r.step_s, base.step_s,
                      r.swapped_tensors, r.swapped_bytes, r.recomputed_tensors, shape,
                      f"{prof.name}: {source}")


def read_plan_file(path: str | Path, what: str) -> MemoryPlan:
    """The plan in a JSON file: a ``MemoryPlan`` (``swapseg plan``'s memory_plan.json), a
    bare ``SwapPolicy``, ``swapseg plan``'s plan.json report (its ``memory_plan``), or a
    run's plan.json record (its ``plan``). ``what`` names the file in errors."""
    from swapseg.offload.policy import read_plan
    from swapseg.offload.record import json_object

    text = Path(path).read_text()
    d = json_object(text, what)
    for key in ("memory_plan", "plan"):  # a report or a run's record around the plan
        if isinstance(d.get(key), dict) and "swap" not in d:
            return MemoryPlan.from_dict(d[key])
    return read_plan(text, what)


def _record(path: Path) -> dict[str, Any]:
    return read_json_record(path, "plan", "the run's memory plan", "plan record")


def resolve_auto(config: TrainConfig, budget_bytes: int, path: str | Path,
                 echo: Callable[[str], None] = print,
                 model: nn.Module | None = None
                 ) -> tuple[TrainConfig, Prediction | None, dict[str, Any] | None]:
    """``config`` with the plan of ``--swap auto --memory-budget budget_bytes``, its
    prediction and the plan record to write to ``path`` (both None when reused).

    The plan in ``path`` is reused when it was chosen for the same budget, input and
    precision (another one is an InputError: one folder, one plan). Otherwise the
    planner chooses it now; the caller writes the record (``write_json(path, record)``)
    once the run is known to fit, so a refused run leaves nothing behind.
    """
    from swapseg.devices import resolve_device
    from swapseg.planner.choose import choose_plan, resolve_profile
    from swapseg.training.model import build_model

    path = Path(path)
    shape = input_shape(config)
    if path.is_file():
        rec = _record(path)
        want = {"budget_bytes": budget_bytes, "input_shape": list(shape),
                "precision": config.precision}
        have = {k: rec.get(k) for k in want}
        if have != want:
            raise InputError(f"{path} holds a plan for {have}, not {want}; use another --out")
        plan = MemoryPlan.from_dict(rec["plan"])
        echo(f"plan: reusing {path} ({plan.name})")
        return config.replace(plan=plan), None, None
    model = model if model is not None else build_model(config)
    device = resolve_device(config.device)
    loss, dtype, tier = _trace_loss(config), autocast_dtype(config.precision), _tier(device)
    prof = resolve_profile("local", model, shape, tier, loss, dtype)
    plan = choose_plan(model, shape, prof, budget_bytes, loss_fn=loss, autocast_dtype=dtype,
                       tier=tier)
    pred = predict(config, model, plan, device, prof)
    line = plan_line(plan, pred, budget_bytes)
    echo(line)
    record = {"plan": plan.to_dict(), "budget_bytes": budget_bytes,
              "input_shape": list(shape), "precision": config.precision,
              "device": str(device), "line": line, "predicted": pred.to_dict(),
              "measured": []}
    return config.replace(plan=plan), pred, record


def plan_line(plan: MemoryPlan, pred: Prediction, budget_bytes: int | None) -> str:
    """The plan in one readable line, with its predicted peak against the budget."""
    parts = []
    if plan.swap is not None and pred.swapped_tensors:
        s = plan.swap
        where = [s.tier, f"prefetch {s.prefetch}"]
        if s.exclude:
            where.append("except " + ", ".join(s.exclude))
        if s.include:
            where.append("only " + ", ".join(s.include))
        parts.append(f"swap {pred.swapped_tensors} tensors, {human_bytes(pred.swapped_bytes)} "
                     f"({', '.join(where)})")
    if plan.recompute is not None:
        parts.append(f"recompute {', '.join(plan.recompute.scopes)} ({plan.recompute.mode})")
    what = "; ".join(parts) or "keep everything on the device"
    of = f" of {human_bytes(budget_bytes)} budget" if budget_bytes else ""
    slow = pred.step_s / pred.baseline_step_s - 1 if pred.baseline_step_s else 0.0
    return (f"plan: {plan.name or 'given'} — {what}; predicted peak {human_bytes(pred.peak_bytes)}"
            f"{of}, {slow:+.0%} step time")


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, where they come from) the step may use on ``device`` now."""
    given = os.environ.get(AVAILABLE_ENV)
    if given:
        return parse_bytes(given, AVAILABLE_ENV), f"given by {AVAILABLE_ENV}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemAvailable:"))
        return kib * 1024, "available RAM (MemAvailable in /proc/meminfo)"
    except (OSError, StopIteration, ValueError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(total), "physical RAM (sysconf)"


def data_bytes(config: TrainConfig) -> int:
    """Host memory the input pipeline holds while a step runs: the batches the DataLoader
    prefetches (2 per worker, PyTorch's default, or the one being used without workers),
    each ``batch`` samples of 4 image and 3 target channels in float32 at the volume's
    shape (a patch is cut from the whole volume inside the worker)."""
    batches = 2 * config.workers if config.workers else 1
    return batches * config.batch * 7 * 4 * math.prod(config.shape)


def check_fits(config: TrainConfig, pred: Prediction, device: torch.device,
               steps_per_epoch: int, echo: Callable[[str], None] = print) -> None:
    """Stop with one line when the predicted peak cannot fit; on a CPU, say how long
    an epoch is predicted to take.

    The step's predicted peak (plus, on a CPU, the input pipeline's ``data_bytes``) must
    fit in what the device has free minus the planner's safety margin (allocator
    fragmentation, library workspaces and the interpreter are not in the trace)."""
    from swapseg.planner.search import DEFAULT_MARGIN

    avail, source = available_memory(device)
    data = data_bytes(config) if device.type == "cpu" else 0
    need, usable = pred.peak_bytes + data, int(avail * (1 - DEFAULT_MARGIN))
    shape = "x".join(map(str, pred.input_shape))
    if need > usable:
        raise InputError(
            f"one training step at {shape} ({config.precision}, plan "
            f"{config.plan.name or 'given' if config.plan else 'none'}) is predicted to "
            f"peak at {human_bytes(need)} ({need} bytes"
            + (f", of which {human_bytes(data)} input batches" if data else "")
            + f"), more than {human_bytes(usable)} ({DEFAULT_MARGIN:.0%} kept free of the "
            f"{human_bytes(avail)} {source}); ways out: a smaller --shape, --zoom 2 or 3, "
            "or --swap auto --memory-budget SIZE")
    if device.type != "cpu":
        return
    epoch_s = pred.step_s * steps_per_epoch
    warn = "warning: " if epoch_s > SLOW_EPOCH_S else ""
    echo(f"{warn}predicted on this CPU: peak {human_bytes(need)} of {human_bytes(avail)} "
         f"available, {pred.step_s:.3g} s per step, {_duration(epoch_s)} per epoch of "
         f"{steps_per_epoch} steps (training only; {pred.profile}"
         + ("; a lower bound: CPU 3D convolutions run slower than a matmul)"
            if pred.profile.endswith(QUICK) else ")"))


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def check_disk(plan: MemoryPlan | None, pred: Prediction,
               echo: Callable[[str], None] = print) -> int:
    """Warn in one line when the disk tier's folder has less free space than the bytes a
    step writes there; returns the shortfall in bytes (0: it fits, or no disk tier)."""
    from swapseg.offload.transport.disk import disk_shortfall

    if plan is None or plan.swap is None or plan.swap.tier != "disk" or not pred.swapped_bytes:
        return 0
    folder = Path(plan.swap.disk_dir or tempfile.gettempdir()).absolute()
    while not folder.exists() and folder != folder.parent:  # created by the engine later
        folder = folder.parent
    short = disk_shortfall(str(folder), pred.swapped_bytes)
    if short:
        need = pred.swapped_bytes
        echo(f"warning: the disk tier's folder {folder} has {human_bytes(need - short)} "
             f"free, {human_bytes(short)} ({short} bytes) less than the {human_bytes(need)} "
             "a step writes there; give --swap-disk-dir on a larger disk")
    return short


def measured_peak(stats: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """What the first step used: the engine's resident saved-tensor peak, and the
    process's peak (CUDA's allocator, or the peak RSS of the process on a CPU)."""
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        source = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        source = "ru_maxrss, the process's peak RSS"
    return {"engine_peak_saved_bytes": int(stats.get("peak_saved_bytes", 0)),
            "engine_swapped_tensors": int(stats.get("swapped", 0)),
            "peak_bytes": peak, "peak_source": source}


def record_measured(path: Path | None, measured: dict[str, Any]) -> str:
    """Append ``measured`` to the plan record at ``path`` (if any); the console line."""
    budget = predicted = None
    if path is not None and path.is_file():
        rec = _record(path)
        budget = rec.get("budget_bytes")
        predicted = rec.get("predicted") or {}
        if budget:
            measured = {**measured, "within_budget": measured["peak_bytes"] <= budget}
        rec.setdefault("measured", []).append(measured)
        write_json(path, rec)
    line = (f"measured after the first step: peak {human_bytes(measured['peak_bytes'])} "
            f"({measured['peak_source']})")
    if budget:
        line += f" of {human_bytes(budget)} budget"
    if predicted:
        line += f", predicted {human_bytes(predicted['peak_bytes'])}"
    if not measured["engine_swapped_tensors"] and not measured["engine_peak_saved_bytes"]:
        return line + "; engine: not counting (the plan swaps nothing)"
    line += (f"; engine: {human_bytes(measured['engine_peak_saved_bytes'])} saved tensors "
             "resident at its peak")
    if predicted:
        line += f" (predicted {human_bytes(predicted['peak_saved_bytes'])})"
    return line
