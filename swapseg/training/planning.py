"""A run's memory plan: resolved once, predicted before the first step, measured after it.

- :func:`swap_plan` says what ``--swap none|all|auto|FILE`` means, for ``train``,
  ``experiment`` and the demo alike; :func:`on_device` makes a run's plan concrete for
  its device (``MemoryPlan.concrete``: ``auto`` is the disk tier on a CPU, pinned host
  memory on CUDA) before it is predicted or run, so the plan simulated is the plan that
  runs and config.json names the tier that ran.
- :func:`resolve_auto` turns ``--swap auto --memory-budget SIZE`` into one
  :class:`~swapseg.offload.policy.MemoryPlan` with ``choose_plan`` (the run's real loss,
  input shape and autocast dtype) and writes it to ``plan.json``, the run's or the
  experiment's. A ``plan.json`` already there is reused, so every fold and every
  ``--resume`` trains with the same plan.
- :func:`predict` traces one step of the actual model (FakeTensorMode: no memory) and
  simulates it under the plan: its peak memory and its time.
- :func:`check_fits` compares that peak with what the device has free (CUDA's
  ``mem_get_info``, or ``MemAvailable`` of /proc/meminfo on a CPU) and stops with one line
  when it cannot fit; on a CPU it prints the predicted time per epoch (the free memory
  is ``swapseg.devices.available_memory``'s). The disk tier's
  folder is checked for the bytes the plan writes (:func:`check_disk`).
- :func:`measured_peak` is what the run saw after its first step: the engine's accounting,
  and ``torch.cuda.max_memory_allocated`` on CUDA or the process's peak RSS on a CPU;
  it is appended to ``plan.json`` (``measured``) beside the prediction (``predicted``),
  under the same names.

Times before a run use a quick profile (``measure_local`` probes only: a 512x512 matmul
for FLOP/s, a 64 MiB element-wise pass for memory bandwidth, a 64 MiB copy), not the
model's calibrated step, which costs a real step; the ``--swap auto`` plan itself is
chosen on the calibrated profile.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swapseg.devices import available_memory, resolve_device
from swapseg.errors import InputError
from swapseg.io import read_json_record, write_json
from swapseg.offload.measure import peak_rss_bytes
from swapseg.offload.policy import MemoryPlan, SwapPolicy, concrete_tier, read_plan
from swapseg.offload.transport.disk import disk_shortfall
from swapseg.planner.choose import plan_memory
from swapseg.planner.local import measure_local
from swapseg.planner.search import DEFAULT_MARGIN
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step
from swapseg.training.config import TrainConfig
from swapseg.training.losses import make_loss
from swapseg.training.model import build_model
from swapseg.training.precision import autocast_dtype

__all__ = ["PLAN_FILE", "SWAP_CHOICES", "Prediction", "input_shape", "predict",
           "swap_plan", "on_device", "resolve_auto", "plan_record", "new_record",
           "check_fits", "data_bytes", "check_disk", "plan_line", "measured_peak",
           "record_measured", "human_bytes"]

PLAN_FILE = "plan.json"
#: The words ``--swap`` takes besides a JSON file.
SWAP_CHOICES = ("none", "all", "auto")
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


def swap_plan(swap: str, budget_bytes: int | None, device: torch.device
              ) -> tuple[MemoryPlan | None, int | None]:
    """What ``--swap`` means on ``device``, in every command: (the plan, the budget the
    planner must choose one for). ``none``: no plan; ``all``: every saved activation to
    the tier that frees ``device``'s memory; ``auto``: planned later for ``budget_bytes``,
    or for the memory ``device`` has available when no budget is given; a path: the
    ``MemoryPlan`` or ``SwapPolicy`` JSON in that file. A budget with anything but
    ``auto`` would do nothing, so it is refused."""
    if swap != "auto" and budget_bytes is not None:
        raise InputError("--memory-budget is only used with --swap auto")
    if swap == "none":
        return None, None
    if swap == "all":
        return MemoryPlan(swap=SwapPolicy(), name="swap-all").concrete(device.type), None
    if swap == "auto":
        return None, budget_bytes if budget_bytes is not None else available_memory(device)[0]
    path = Path(swap)
    if not path.is_file():
        raise InputError(f"--swap {swap}: not {', '.join(SWAP_CHOICES)} or an existing "
                         "MemoryPlan or SwapPolicy JSON file")
    return read_plan(path.read_text(), f"--swap {swap}").concrete(device.type), None


def on_device(config: TrainConfig, device: torch.device) -> TrainConfig:
    """``config`` with its plan made concrete for ``device`` (``MemoryPlan.concrete``):
    the plan that is predicted, run and written to config.json."""
    return config if config.plan is None else \
        config.replace(plan=config.plan.concrete(device.type))


@functools.lru_cache(maxsize=4)
def _quick_profile(device_type: str) -> Any:
    # probes only (no model step); "host" so that no disk probe runs before every run
    return measure_local(None, tier="cuda" if device_type == "cuda" else "host")


def predict(config: TrainConfig, model: nn.Module, plan: MemoryPlan | None,
            device: torch.device, profile: Any = None) -> Prediction:
    """Trace one step of ``model`` as ``config`` trains it and simulate it under ``plan``
    on ``profile`` (default: the quick profile of ``device``)."""
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


def _record(path: Path) -> dict[str, Any]:
    return read_json_record(path, "plan", "the run's memory plan", "plan record")


def resolve_auto(config: TrainConfig, budget_bytes: int, path: str | Path,
                 echo: Callable[[str], None] = print,
                 model: nn.Module | None = None, budget_from: str | None = None,
                 replan: bool = False
                 ) -> tuple[TrainConfig, Prediction | None, dict[str, Any] | None]:
    """``config`` with the plan of ``--swap auto --memory-budget budget_bytes``, its
    prediction and the plan record to write to ``path`` (both None when reused).

    The plan in ``path`` is reused when it was chosen for the same budget, input and
    precision (another one is an InputError: one folder, one plan, except with
    ``replan``: a resumed run given another budget is planned anew, since a plan changes
    where tensors live, not what a step computes); ``budget_from`` names where a budget
    that was not given came from (the device's available memory, which changes from run
    to run), and such a plan is reused whatever its budget was.
    Otherwise the planner chooses it now, for the tier that frees the device's memory;
    the caller writes the record (``write_json(path, record)``) once the run is known to
    fit, so a refused run leaves nothing behind.
    """
    path = Path(path)
    shape = input_shape(config)
    device = resolve_device(config.device)
    if path.is_file():
        rec = _record(path)
        want = {"input_shape": list(shape), "precision": config.precision}
        if budget_from is None:
            want["budget_bytes"] = budget_bytes
        have = {k: rec.get(k) for k in want}
        if have == want:
            plan = MemoryPlan.from_dict(rec["plan"]).concrete(device.type)
            echo(f"plan: reusing {path} ({plan.name})")
            return config.replace(plan=plan), None, None
        if not replan:
            raise InputError(f"{path} holds a plan for {have}, not {want}; use another --out")
    model = model if model is not None else build_model(config)
    loss, dtype = _trace_loss(config), autocast_dtype(config.precision)
    tier = concrete_tier("auto", device.type)
    found = plan_memory(model, shape, "local", budget_bytes=budget_bytes, loss_fn=loss,
                        autocast_dtype=dtype, tier=tier)  # one trace: its evidence is used
    plan, r, base = found.plan.concrete(device.type), found.predicted, found.keep_all
    config = config.replace(plan=plan)
    pred = Prediction(r.peak_bytes, r.peak_saved_bytes, r.step_s, base.step_s,
                      r.swapped_tensors, r.swapped_bytes, r.recomputed_tensors, shape,
                      f"{found.profile.name}: calibrated local profile")
    line = plan_line(plan, pred, budget_bytes)
    echo(line)
    record = plan_record(config, pred, device, budget_bytes, line)
    if budget_from is not None:
        record["budget_from"] = budget_from
    return config, pred, record


def plan_record(config: TrainConfig, pred: Prediction, device: torch.device,
                budget_bytes: int | None = None, line: str | None = None) -> dict[str, Any]:
    """A run's plan.json: the plan that runs (concrete for ``device``), what the planner
    predicted for it and, after the first step, what was measured (``measured``, a list:
    one entry per fold and per resume)."""
    assert config.plan is not None
    return {"plan": config.plan.to_dict(), "budget_bytes": budget_bytes,
            "input_shape": list(pred.input_shape), "precision": config.precision,
            "device": str(device), "line": line or plan_line(config.plan, pred, budget_bytes),
            "predicted": pred.to_dict(), "measured": []}


def new_record(config: TrainConfig, pred: Prediction, device: torch.device,
               path: Path) -> dict[str, Any] | None:
    """The plan record to write to ``path`` for a run with a plan given (not ``auto``):
    None when there is no plan or ``path`` already records this one (another fold, a
    resume), so its measured steps go on accumulating; a new record when the plan
    changed (a resume with another ``--swap``)."""
    if config.plan is None:
        return None
    if path.is_file() and _record(path).get("plan") == config.plan.to_dict():
        return None
    return plan_record(config, pred, device)


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
    """What the first step used, under the names the prediction uses: the saved tensors
    resident at the engine's peak, the tensors it swapped, and the process's peak (CUDA's
    allocator, or the peak RSS of the process on a CPU)."""
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        source = "torch.cuda.max_memory_allocated"
    else:
        peak, source = peak_rss_bytes(), "the process's peak RSS"
    # the engine's counter is being renamed from peak_device_bytes to peak_saved_bytes
    saved = stats.get("peak_saved_bytes", stats.get("peak_device_bytes", 0))
    return {"peak_saved_bytes": int(saved), "swapped_tensors": int(stats.get("swapped", 0)),
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
    if not measured["swapped_tensors"] and not measured["peak_saved_bytes"]:
        return line + "; engine: not counting (the plan swaps nothing)"
    line += (f"; engine: {human_bytes(measured['peak_saved_bytes'])} saved tensors "
             "resident at its peak")
    if predicted:
        line += f" (predicted {human_bytes(predicted['peak_saved_bytes'])})"
    return line
