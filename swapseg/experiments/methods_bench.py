"""`swapseg bench`: measure every memory-saving method side by side, with predictions.

Each method trains the same model (fresh copy, same seed) for a few steps at one shape:
warm-up, then the median step time; one more step under the swap engine's accounting
(``SwapPolicy(n_tensors=0)`` for methods that swap nothing, so every method's resident
saved bytes are counted by the same hooks); and one step under the profiler for the peak
of allocations. Ratios are to no swapping. Next to each measurement stands the planner's
prediction (``local`` profile) and, for the paper's 16 GiB GPU, the largest cube side the
planner predicts each method to fit.

On a CPU "device" and host memory are the same memory, so ``peak_alloc_bytes`` counts
allocations made during the step (the engine's host buffers are pooled and allocated
before the measured step, so they are not in it) plus parameters and optimizer state.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from swapseg.experiments.paper_configs import HYBRID, hybrid_plan, paper_candidates
from swapseg.offload import MemoryPlan, RecomputePolicy, SwapPolicy, apply_plan
from swapseg.offload.measure import allocation_events, profiled_peak_bytes, train_step
from swapseg.planner import DEFAULT_MARGIN, DeviceProfile, choose_plan, get_profile, search
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import StepTrace, trace_step
from swapseg.training.losses import soft_dice_loss

CPU = torch.device("cpu")

__all__ = ["allocation_events", "measured_largest_sides", "profiled_peak_bytes", "dice_loss",
           "dice_trace", "bench_methods", "run_bench", "largest_sides", "default_budget",
           "METHODS", "HYBRID"]

METHODS = ("none", "save_on_cpu", "paper-config-1", "paper-config-2", "paper-config-3",
           "paper-config-4", "auto", "recompute-full", "recompute-speed", "hybrid")


def dice_loss(out: torch.Tensor) -> torch.Tensor:
    """The training loss (soft Dice) against an empty target: what a U-Net step saves."""
    return soft_dice_loss(out, torch.zeros_like(out))


def dice_trace(model: nn.Module, shape: tuple[int, ...],
               autocast_dtype: torch.dtype | None = None) -> StepTrace:
    """The planner's trace of one step under the training loss."""
    return trace_step(model, shape, dice_loss, autocast_dtype=autocast_dtype)


def _plans(trace: StepTrace, device: DeviceProfile, budget: int | None) -> dict[str, Any]:
    """Method name -> MemoryPlan (or the string 'save_on_cpu')."""
    plans: dict[str, Any] = {"none": MemoryPlan(name="none"), "save_on_cpu": "save_on_cpu"}
    paper = paper_candidates(trace)
    for c in paper:
        plans[c.name] = MemoryPlan(c.swap, c.recompute, c.name)
    if budget is not None:  # the planner's choice (raises InputError when nothing fits)
        chosen = search(trace, device, budget, extra=paper).chosen
        assert chosen is not None
        plans["auto"] = MemoryPlan(chosen.swap, chosen.recompute, f"auto: {chosen.name}")
    plans["recompute-full"] = MemoryPlan(None, RecomputePolicy(("*",), "full"), "full")
    plans["recompute-speed"] = MemoryPlan(None, RecomputePolicy(("*",), "speed"), "speed")
    if any(c.name == "paper-config-3" for c in paper):  # the model has a decoder
        plans["hybrid"] = hybrid_plan()
    return plans


@contextlib.contextmanager
def _method(model: nn.Module, plan: Any, account: bool) -> Iterator[Any]:
    if plan == "save_on_cpu":
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            yield None
        return
    if account and plan.swap is None:  # count resident saved bytes, move nothing
        plan = MemoryPlan(SwapPolicy(n_tensors=0), plan.recompute, plan.name)
    with apply_plan(model, plan) as stats:
        yield stats


class _Runner:
    """One method's model, optimizer and input; ``step()`` runs one training step."""

    def __init__(self, model0: nn.Module, shape: tuple[int, ...], plan: Any,
                 device: torch.device = CPU, autocast_dtype: torch.dtype | None = None,
                 compile: bool = False) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = copy.deepcopy(model0).to(device)
        # plans name scopes of the model itself; the compiled wrapper only runs it
        self.run = torch.compile(self.model) if compile else self.model
        self.autocast_dtype = autocast_dtype
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(shape, device=device)
        self.plan = plan
        self.times: list[float] = []

    def step(self, account: bool = False) -> Any:
        with _method(self.model, self.plan, account) as stats:
            train_step(self.run, self.x, dice_loss, self.autocast_dtype, self.opt)
        return stats

    def timed(self) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step()
        _sync(self.device)
        self.times.append(time.perf_counter() - t0)

    def peak_alloc_bytes(self) -> int:
        if self.device.type == "cuda":  # parameters and Adam state are allocated already
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            _sync(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        persistent = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        return persistent + profiled_peak_bytes(self.step)

    def report(self, warmup: int, profile_peak: bool) -> dict[str, Any]:
        times = self.times[warmup:]
        stats = self.step(account=True)
        out: dict[str, Any] = {"step_s": statistics.median(times), "step_s_all": times}
        if stats is not None:
            out["peak_saved_device_bytes"] = stats.peak_device_bytes
            out["bytes_copied"] = stats.bytes_out + stats.bytes_in
            out["swapped_tensors"] = stats.swapped
        if profile_peak:
            out["peak_alloc_bytes"] = self.peak_alloc_bytes()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_largest_sides(model: nn.Module, plans: dict[str, Any], cap: int,
                           channels: int, sides: range, device: torch.device
                           ) -> dict[str, int | None]:
    """On CUDA: per method, the largest side whose training step runs under ``cap``
    (``torch.cuda.set_per_process_memory_fraction``), trying sides in increasing order."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    best: dict[str, int | None] = {}
    try:
        for name, plan in plans.items():
            best[name] = None
            for s in sides:
                if plan == "auto":
                    try:
                        p = choose_plan(model, (1, channels, s, s, s), "local",
                                        budget_bytes=cap, loss_fn=dice_loss, tier="cuda")
                    except Exception:  # noqa: BLE001 - InputError: the planner says no fit
                        break
                else:
                    p = plan
                try:
                    _Runner(model, (1, channels, s, s, s), p, device).step()
                    best[name] = s
                except torch.cuda.OutOfMemoryError:
                    break
                finally:
                    torch.cuda.empty_cache()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return best


def _predicted_peak(tr: StepTrace, device: DeviceProfile, plan: Any, cap: int) -> float:
    if plan == "auto":
        res = search(tr, device, cap, require_fit=False, extra=paper_candidates(tr))
        return res.chosen.result.peak_bytes if res.chosen else float("inf")  # type: ignore
    if plan == "save_on_cpu":
        return simulate(tr, device, SwapPolicy(prefetch=1)).peak_bytes  # moves every tensor
    return simulate(tr, device, plan.swap, plan.recompute).peak_bytes


def largest_sides(model: nn.Module, plans: dict[str, Any], device: DeviceProfile, cap: int,
                  channels: int, sides: range,
                  autocast_dtype: torch.dtype | None = None) -> dict[str, int | None]:
    """Per method, the largest cube side in ``sides`` whose predicted peak fits the cap
    minus the planner's safety margin (None: not even the smallest)."""
    best: dict[str, int | None] = {n: None for n in plans}
    alive = set(plans)
    for s in sides:
        if not alive:
            break
        tr = dice_trace(model, (1, channels, s, s, s), autocast_dtype)
        for n in sorted(alive):
            if _predicted_peak(tr, device, plans[n], cap) <= cap * (1 - DEFAULT_MARGIN):
                best[n] = s
            else:
                alive.discard(n)
    return best


def bench_methods(model: nn.Module, shape: tuple[int, ...], budget: int | None,
                  steps: int = 3,
                  warmup: int = 1, profile_peak: bool = True,
                  methods: tuple[str, ...] = METHODS,
                  progress: Callable[[str], None] | None = None,
                  device: DeviceProfile | None = None,
                  torch_device: torch.device = CPU,
                  autocast_dtype: torch.dtype | None = None,
                  compile: bool = False) -> dict[str, Any]:
    """Measure ``methods`` side by side; predictions use ``device`` (default: ``local``,
    calibrated at the bench shape, so "none" is predicted from itself and the other
    methods' predictions test the simulator's model of swapping and recomputation)."""
    if device is None:
        cuda = torch_device.type == "cuda"
        device = get_profile("local", model, tier="cuda" if cuda else "host",
                             calibrate_shape=None if cuda else shape, loss_fn=dice_loss,
                             autocast_dtype=autocast_dtype)
    local = device
    trace = dice_trace(model, shape, autocast_dtype)
    if budget is None:
        budget = default_budget(trace, local)
    plans = _plans(trace, local, budget)
    runners = {n: _Runner(model, shape, plans[n], torch_device, autocast_dtype, compile)
               for n in methods if n in plans}
    # round robin: on a shared machine, load drifts; interleaving spreads it over methods
    for i in range(warmup + steps):
        for name, r in runners.items():
            if progress:
                progress(f"step {i + 1}/{warmup + steps}: {name}")
            r.timed()
    rows: dict[str, Any] = {}
    for name, runner in runners.items():
        plan = plans[name]
        row = runner.report(warmup, profile_peak)
        sim_plan = (SwapPolicy(prefetch=1), None) if plan == "save_on_cpu" else \
            (plan.swap, plan.recompute)
        pred = simulate(trace, local, *sim_plan)
        row.update(plan="save_on_cpu" if plan == "save_on_cpu" else plan.to_dict(),
                   predicted_step_s=pred.step_s, predicted_peak_bytes=pred.peak_bytes,
                   predicted_peak_saved_bytes=pred.peak_saved_bytes)
        if plan == "save_on_cpu":
            row["bytes_copied"] = 2 * sum(s.nbytes for s in trace.saved)  # every pack moves
        rows[name] = row
    base = rows.get("none")
    if base:
        for row in rows.values():
            row["step_ratio"] = row["step_s"] / base["step_s"]
            for k in ("peak_saved_device_bytes", "peak_alloc_bytes"):
                if k in row and base.get(k):
                    row[k.replace("_bytes", "_ratio")] = row[k] / base[k]
    return {"local_profile": local.to_dict(), "trace": trace.summary(), "methods": rows,
            "budget_bytes": budget,
            "plans": {k: (v if isinstance(v, str) else v.to_dict()) for k, v in plans.items()}}


def default_budget(trace: StepTrace, device: DeviceProfile) -> int:
    """A budget whose usable part lies halfway between the lowest predicted peak of any
    candidate and the no-swap peak: something must be swapped or recomputed."""
    res = search(trace, device, 2**62, require_fit=False)
    peaks = [c.result.peak_bytes for c in res.candidates]  # type: ignore[union-attr]
    keep, low = peaks[0], min(peaks)
    return int((low + 0.5 * (keep - low)) / (1 - DEFAULT_MARGIN))


def run_bench(shape: tuple[int, ...], budget: int | None, steps: int, warmup: int,
              profile_peak: bool, cap: int, cap_device: str, sides: range,
              progress: Callable[[str], None] | None = None,
              torch_device: str = "cpu", autocast_dtype: torch.dtype | None = None,
              compile: bool = False) -> dict[str, Any]:
    """The Isensee U-Net's methods bench; ``cap_device`` is the hardware profile of
    the largest-side search."""
    from swapseg.envinfo import environment
    from swapseg.models.unet3d import Isensee3DUNet

    tdev = torch.device(torch_device)
    model = Isensee3DUNet(in_channels=shape[1])
    res = bench_methods(model, shape, budget, steps, warmup, profile_peak, progress=progress,
                        torch_device=tdev, autocast_dtype=autocast_dtype, compile=compile)
    budget = res["budget_bytes"]
    dev = get_profile(cap_device)
    plans = _plans(dice_trace(model, shape, autocast_dtype), dev, None)
    plans["auto"] = "auto"  # re-planned at every side
    if progress:
        progress("largest sides under the cap")
    largest = largest_sides(model, {n: plans[n] for n in res["methods"]}, dev, cap,
                            shape[1], sides, autocast_dtype)
    ls: dict[str, Any] = {"device": cap_device, "cap_bytes": cap, "how": (
        "predicted by the planner's simulator (validated against CPU runs)"), "sides": largest}
    if tdev.type == "cuda":
        if progress:
            progress("largest sides under the cap, measured on this GPU")
        ls["measured_sides"] = measured_largest_sides(
            model, {n: (plans[n] if n != "save_on_cpu" else "save_on_cpu")
                    for n in res["methods"]}, cap, shape[1], sides, tdev)
        ls["measured_how"] = ("measured: one training step per side under "
                              "torch.cuda.set_per_process_memory_fraction(cap / total)")
    res.update(environment=environment(), shape=list(shape), budget_bytes=budget,
               steps=steps, warmup=warmup, torch_device=str(tdev), largest_side=ls)
    return res
