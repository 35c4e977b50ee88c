"""The one step harness: a training step, timed under a memory-saving context.

``train_step`` is the step every measurement runs (benchmarks, the methods bench, the
planner's calibration, its check against measured runs).

``measure_steps(model, input_shape, context_factory, steps=5, warmup=1)`` trains ``model``
for ``warmup + steps`` steps (forward, loss, backward, optimizer step) inside ONE context
made by ``context_factory(model)``, one engine for all of them as the training loop has
one for its run (the engine learns the unpack order in one step and prefetches by it in
the next). Contexts that yield a ``SwapStats`` get per-step figures.

Ready-made context factories (each ``factory(model) -> context manager``):

- ``no_swap``: nothing installed (the time baseline; yields empty stats);
- ``keep_all``: the engine with ``SwapPolicy(n_tensors=0)``: moves nothing, counts the
  resident saved bytes of no swapping with the same hooks as every other method;
- ``swap(policy)``: the engine with ``policy``;
- ``save_on_cpu``: torch's ``save_on_cpu(pin_memory=True)`` pack/unpack, counted:
  every saved tensor (parameters included) is copied on pack into a fresh host tensor,
  no dedup; on unpack it goes back with ``.to(device)``. Accounted like the engine: a
  copy-out is synchronous, so nothing is resident in forward; a reloaded tensor counts at
  its unpack, so the peak is the largest saved tensor. (On a CPU-only machine the
  ``.to('cpu')`` on unpack copies nothing; torch's default ``pin_memory=False`` copies
  nothing at all on CPU, since ``.cpu()`` of a CPU tensor is itself.)
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from swapseg.offload.apply import swap_activations
from swapseg.offload.policy import SwapPolicy
from swapseg.offload.stats import SwapStats
from swapseg.offload.tracker import ScopeTracker

__all__ = ["measure_steps", "train_step", "default_loss", "autocast", "no_swap", "keep_all",
           "swap", "save_on_cpu", "peak_rss_bytes", "profiled_peak_bytes", "allocation_events",
           "COUNTERS"]

#: Per-step counters reported by ``measure_steps`` (medians over the measured steps).
COUNTERS = ("packed", "storages", "swapped", "deduplicated", "kept", "bytes_out", "bytes_in",
            "wait_s", "prefetch_hits", "prefetch_misses")


def no_swap(model: nn.Module) -> contextlib.AbstractContextManager[SwapStats]:
    return swap_activations(model, None)


def keep_all(model: nn.Module) -> contextlib.AbstractContextManager[SwapStats]:
    return swap_activations(model, SwapPolicy(n_tensors=0))


def swap(policy: SwapPolicy, **kwargs: Any) -> Callable[[nn.Module], Any]:
    return lambda model: swap_activations(model, policy, **kwargs)


@contextlib.contextmanager
def save_on_cpu(model: nn.Module) -> Iterator[SwapStats]:
    """torch's ``save_on_cpu(pin_memory=True)``, with counters (see the module docstring)."""
    stats = SwapStats()
    tracker = ScopeTracker(model)
    pin = torch.cuda.is_available()

    def pack(t: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
        packed = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=pin)
        packed.copy_(t, non_blocking=pin)
        nbytes = t.numel() * t.element_size()
        stats.count(tracker.scope, "swapped", nbytes)
        return (t.device, packed)

    def unpack(p: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
        device, packed = p
        nbytes = packed.numel() * packed.element_size()
        stats.bytes_in += nbytes
        stats.add_resident(nbytes)  # counted at its unpack, like a reloaded entry
        stats.saved_bytes -= nbytes
        return packed.to(device, non_blocking=pin)

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield stats
    finally:
        tracker.remove()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    Read from ``/proc/self/status`` (VmHWM): ``getrusage``'s ``ru_maxrss`` is not used
    because Linux carries it over ``fork`` + ``exec``, so a child process would report
    its parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def default_loss(out: Any) -> torch.Tensor:
    """A model-agnostic loss: the mean of squared outputs, summed over every output
    tensor (a tuple, list or dict of them counts too), computed in fp32."""
    if isinstance(out, torch.Tensor):
        return out.float().square().mean()
    parts = out.values() if isinstance(out, dict) else out
    terms = [default_loss(o) for o in parts
             if isinstance(o, (torch.Tensor, list, tuple, dict))]
    if not terms:
        raise TypeError(f"default_loss: no tensor in the model output ({type(out).__name__})")
    return torch.stack(terms).sum()


def autocast(device: torch.device | str, dtype: torch.dtype | None
             ) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` on ``device``'s type at ``dtype``; a null context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def train_step(model: nn.Module, x: torch.Tensor,
               loss_fn: Callable[[Any], torch.Tensor] | None = None,
               autocast_dtype: torch.dtype | None = None,
               opt: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """One training step: zero grads, forward and loss (under autocast at
    ``autocast_dtype`` when given), backward, and ``opt.step()`` when an optimizer is
    given. The one step every harness here runs; returns the detached loss."""
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)
    with autocast(x.device, autocast_dtype):
        loss = (loss_fn or default_loss)(model(x))
    loss.backward()
    if opt is not None:
        opt.step()
    return loss.detach()


def allocation_events(prof: Any) -> list[tuple[int, int, int, str]]:
    """The memory events of a ``torch.profiler`` run (``profile_memory=True``), in time
    order: (time ns, bytes (negative: a free), address, the chain of ops around it)."""
    out = []
    stack = [(n, "") for n in prof.profiler.kineto_results.experimental_event_tree()]
    while stack:
        node, chain = stack.pop()
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            out.append((node.start_time_ns, f.alloc_size, f.ptr, chain))
            continue
        here = f"{chain} < {node.name}" if chain else node.name
        stack.extend((c, here) for c in node.children)
    return sorted(out)


def profiled_peak_bytes(step: Callable[[], Any]) -> int:
    """Peak of allocations made during ``step()``, from the profiler's memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    cur = peak = 0
    for _, size, _, _ in allocation_events(prof):
        cur += size
        peak = max(peak, cur)
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(model: nn.Module, input_shape: Sequence[int],
                  context_factory: Callable[[nn.Module], Any], steps: int = 5,
                  warmup: int = 1, *, device: str | torch.device | None = None,
                  loss_fn: Callable[[Any], torch.Tensor] | None = None,
                  lr: float = 5e-4, seed: int = 0,
                  autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Time ``warmup + steps`` training steps of ``model`` inside one ``context_factory`` context.

    Args:
        model: trained in place (pass a copy to keep the original); moved to ``device``.
        input_shape: ``(B, C, *spatial)`` of a random input (fixed across steps).
        context_factory: ``factory(model) -> context manager``; see ``no_swap``,
            ``keep_all``, ``swap(policy)``, ``save_on_cpu``.
        steps: measured steps (after ``warmup`` unmeasured ones).
        device: defaults to the model's device.
        loss_fn: ``loss_fn(output) -> scalar``; default mean of squared outputs.
        lr: Adam learning rate (the optimizer step is part of the step).
        seed: seeds the input and the dropout masks.
        autocast_dtype: run forward and loss under ``torch.autocast`` at this dtype.

    Returns a JSON-able dict: ``step_s`` (median seconds of a step), ``step_s_all``,
    ``peak_saved_bytes`` (largest per-step peak of the engine's resident saved bytes,
    see ``SwapStats``; 0 when the context counts nothing), medians of the per-step
    ``COUNTERS``, ``peak_rss_bytes`` (process high-water mark, includes everything
    before the call), ``cuda_peak_bytes`` on CUDA (``max_memory_allocated`` over the
    measured steps), ``loss`` (last), ``steps``, ``warmup``, ``input_shape``.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(input_shape), generator=gen).to(dev)
    times: list[float] = []
    per_step: list[dict[str, Any]] = []
    peaks: list[int] = []
    loss = torch.zeros(())
    with context_factory(model) as stats:
        for i in range(warmup + steps):
            if i == warmup and dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            before = stats.as_dict() if stats is not None else {}
            if stats is not None:
                stats.reset_peak()
            torch.manual_seed(seed + i)
            _sync(dev)
            t0 = time.perf_counter()
            loss = train_step(model, x, loss_fn, autocast_dtype, opt)
            _sync(dev)
            dt = time.perf_counter() - t0
            if i < warmup:
                continue
            times.append(dt)
            if stats is not None:
                after = stats.as_dict()
                per_step.append({k: after[k] - before[k] for k in COUNTERS})
                peaks.append(stats.peak_saved_bytes)
    out: dict[str, Any] = {
        "step_s": statistics.median(times),
        "step_s_all": [round(t, 6) for t in times],
        "peak_saved_bytes": max(peaks) if peaks else 0,
        "peak_rss_bytes": peak_rss_bytes(),
        "loss": float(loss.detach()),
        "steps": steps,
        "warmup": warmup,
        "input_shape": list(input_shape),
    }
    for k in COUNTERS:
        vals = [s[k] for s in per_step] or [0]
        out[k] = statistics.median(vals)
    if dev.type == "cuda":
        out["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    return out
