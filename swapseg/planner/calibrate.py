"""Calibrate a CPU profile's clock with real training steps of the model itself.

One step at one shape (``calibrate_step``) gives the conv rates of that shape. CPU conv
speed depends on the op's size (cache blocking, threading granularity), so a rate from
a 64^3 step extrapolated linearly in FLOPs mispredicts larger steps. ``calibrate`` runs
one profiled step at each of several shapes and keeps, per phase, the measured rate of
each conv op against its FLOPs (``DeviceProfile.conv_rate_curve``: a conv op's rate is
interpolated in log FLOPs, constant past the largest op measured); everything else (norms,
activations, adds, the optimizer, dispatch) is fitted as ``io_bytes / bandwidth + ops x
overhead`` by least squares over the shapes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from swapseg.errors import InputError
from swapseg.offload.engine import swap_activations
from swapseg.offload.measure import train_step
from swapseg.offload.policy import SwapPolicy
from swapseg.planner.profiles import DeviceProfile, layer_key
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step

__all__ = ["calibrate_step", "calibrate", "calibrated", "conv_curve", "calibrate_tier"]

_CONV_EVENTS = ("aten::convolution", "aten::convolution_backward")

#: kineto's trace lines for every profiler start and stop, written to fd 2 by C++
_USDT = re.compile(r"^USDT:.*\] profiler_(start|stop)\s*$")


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """Drop kineto's ``USDT: ... profiler_start/stop`` lines from the process's stderr
    (file descriptor 2, where C++ writes them); every other line written meanwhile is
    passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(True)
                    if not _USDT.match(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def calibrate_step(model: nn.Module, shape: tuple[int, ...], loss_fn: Any = None,
                   autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Rates from one real training step of ``model`` at ``shape``, timed per op.

    The step is traced too, so its FLOPs and bytes are known. Returns ``fwd`` and ``bwd``
    (conv FLOP/s per phase; absent when the model has no convolutions), ``mem`` (an
    effective bandwidth for everything else: norms, activations, matmuls, adds, copies,
    dispatch), ``wall_s`` (of the same step run again without the profiler: every time is
    scaled by ``profiler_scale``, that wall over the profiled one), and for the multi-shape
    fit ``conv_points`` (phase -> list of (FLOPs, seconds) per conv op, when the
    profiler's conv events pair one to one with the trace's), ``conv_layers`` (the same
    per layer shape), ``other_s``, ``other_io_bytes``, ``other_ops`` and
    ``other_io_centre``.
    Raises InputError when the step cannot run at ``shape``.
    """
    x = torch.randn(shape)
    try:
        tr = trace_step(model, shape, loss_fn, autocast_dtype=autocast_dtype)
        train_step(model, x, loss_fn, autocast_dtype)  # warm-up: allocator, oneDNN caches
    except Exception as exc:  # noqa: BLE001 - the user's model and loss may raise anything
        raise InputError(f"calibration step of {type(model).__name__} at "
                         f"{'x'.join(map(str, shape))} failed: {str(exc).splitlines()[0]}"
                         ) from None
    # conv times and the wall time come from the same step: on a shared machine the load
    # changes from one step to the next
    with _kineto_quiet(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        train_step(model, x, loss_fn, autocast_dtype)
        wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_step(model, x, loss_fn, autocast_dtype)
    # the profiler's own cost per op inflates the profiled step (most at small shapes):
    # every measured time is scaled to the wall time of the same step without it
    scale = (time.perf_counter() - t0) / wall
    model.zero_grad(set_to_none=True)
    per: dict[str, list[Any]] = {ev: [] for ev in _CONV_EVENTS}
    for e in prof.events():  # top-level conv events only (backends run inside them)
        if e.name in per and (e.cpu_parent is None or e.cpu_parent.name not in per):
            per[e.name].append((e.time_range.start, scale * e.cpu_time_total / 1e6))
    t = {ev: sum(d for _, d in v) for ev, v in per.items()}
    wall *= scale
    out: dict[str, Any] = {"wall_s": wall, "profiler_scale": scale, "conv_points": {}}
    out["conv_layers"] = {}
    for phase, ev in zip(("fwd", "bwd"), _CONV_EVENTS, strict=True):
        conv_ops = [o for o in tr.ops if o.conv and o.phase == phase]
        ops = [o.flops for o in conv_ops]
        f = sum(ops)
        if f and t[ev] > 0:
            out[phase] = f / t[ev]
            times = [d for _, d in sorted(per[ev])]
            if len(times) == len(ops):  # same ops in the same (deterministic) order
                pairs = [(o, s) for o, s in zip(conv_ops, times, strict=True)
                         if o.flops > 0 and s > 0]
                out["conv_points"][phase] = [(o.flops, s) for o, s in pairs]
                out["conv_layers"][phase] = [(layer_key(phase, o.conv), o.flops, s)
                                             for o, s in pairs]
        elif f:
            raise InputError(f"calibration: the profiler timed no {ev} in a step with "
                             "convolutions; cannot measure their rate")
    other = [o for o in tr.ops if not o.conv]
    io = sum(o.io_bytes for o in other)
    out["other_s"] = max(wall - t[_CONV_EVENTS[0]] - t[_CONV_EVENTS[1]], 1e-6)
    out["other_io_bytes"] = io
    out["other_ops"] = len(other)
    out["mem"] = io / out["other_s"]
    sized = [o.io_bytes for o in other if o.io_bytes > 0]
    # where on the size axis this step's bandwidth was measured: the io-weighted
    # geometric mean of its ops' sizes
    out["other_io_centre"] = math.exp(sum(b * math.log(b) for b in sized) / sum(sized)) \
        if sized else 0.0
    return out


def conv_curve(points: Sequence[tuple[float, float]], bins_per_octave: float = 1.0
               ) -> tuple[tuple[float, float], ...]:
    """(FLOPs, FLOP/s) points from (FLOPs, seconds) per conv op: ops binned by log2 FLOPs,
    each bin's rate its total FLOPs over its total seconds, at its FLOP-weighted centre."""
    bins: dict[int, list[tuple[float, float]]] = {}
    for f, s in points:
        bins.setdefault(math.floor(math.log2(f) * bins_per_octave), []).append((f, s))
    out = []
    for k in sorted(bins):
        fl = sum(f for f, _ in bins[k])
        sec = sum(s for _, s in bins[k])
        centre = math.exp(sum(f * math.log(f) for f, _ in bins[k]) / fl)
        out.append((centre, fl / sec))
    return tuple(out)


def _fit_other(steps: list[dict[str, Any]]) -> tuple[float, float]:
    """(bandwidth, per-op overhead) with other_s = io / bw + ops * overhead, least
    squares over the steps; one step (or a fit that comes out negative) gives the
    bandwidth alone."""
    xs = [(c["other_io_bytes"], c["other_ops"], c["other_s"]) for c in steps]
    if len(xs) >= 2:
        a11 = sum(i * i for i, _, _ in xs)
        a12 = sum(i * n for i, n, _ in xs)
        a22 = sum(n * n for _, n, _ in xs)
        b1 = sum(i * s for i, _, s in xs)
        b2 = sum(n * s for _, n, s in xs)
        det = a11 * a22 - a12 * a12
        if det > 0:
            inv_bw = (b1 * a22 - b2 * a12) / det
            ovh = (a11 * b2 - a12 * b1) / det
            if inv_bw > 0 and ovh >= 0:
                return 1 / inv_bw, ovh
    return sum(i for i, _, _ in xs) / sum(s for _, _, s in xs), 0.0


def _layer_rates(steps: Sequence[dict[str, Any]], ovh: float
                 ) -> dict[str, tuple[tuple[float, float], ...]]:
    """Per layer shape: (FLOPs, FLOP/s) points, the ops of one shape and size pooled."""
    pooled: dict[str, dict[float, list[float]]] = {}
    for c in steps:
        for rows in c.get("conv_layers", {}).values():
            for key, fl, sec in rows:
                acc = pooled.setdefault(key, {}).setdefault(float(fl), [0.0, 0.0])
                acc[0] += fl
                acc[1] += max(sec - ovh, 0.5 * sec)
    return {key: tuple((fl, f / s) for fl, (f, s) in sorted(pts.items()))
            for key, pts in pooled.items()}


def _mem_curve(steps: Sequence[dict[str, Any]], ovh: float
               ) -> tuple[tuple[float, float], ...]:
    """(op size, bytes/s) per calibration shape: its other ops' bytes over their time
    (less the per-op overhead), at their io-weighted mean size; shapes measured twice
    give the median."""
    at: dict[float, list[float]] = {}
    for c in steps:
        centre = c.get("other_io_centre", 0.0)
        left = c["other_s"] - c["other_ops"] * ovh
        if centre > 0 and left > 0:
            at.setdefault(round(centre), []).append(c["other_io_bytes"] / left)
    return tuple((float(x), statistics.median(v)) for x, v in sorted(at.items()))


def calibrate(profile: DeviceProfile, model: nn.Module, shapes: Sequence[tuple[int, ...]],
              loss_fn: Any = None, autocast_dtype: torch.dtype | None = None,
              repeats: int = 1) -> tuple[DeviceProfile, list[dict[str, Any]]]:
    """``profile`` with its clock set from profiled steps of ``model`` at ``shapes``
    (``repeats`` steps each; the median rate per conv bin). Returns the profile and the
    raw per-step measurements."""
    if not shapes:
        raise InputError("calibration needs at least one shape")
    steps = [calibrate_step(model, tuple(s), loss_fn, autocast_dtype)
             for s in shapes for _ in range(repeats)]
    for c, s in zip(steps, [s for s in shapes for _ in range(repeats)], strict=True):
        c["shape"] = list(s)
    return calibrated(profile, steps), steps


def calibrated(profile: DeviceProfile, steps: Sequence[dict[str, Any]]) -> DeviceProfile:
    """``profile`` with its clock set from ``calibrate_step`` results (each with its
    ``shape``), taken at several shapes; see ``calibrate``."""
    steps = list(steps)
    bw, ovh = _fit_other(steps)
    curve: dict[str, tuple[tuple[float, float], ...]] = {}
    for phase in ("fwd", "bwd"):
        # the simulator adds the per-op overhead to conv ops too: take it out of their time
        pts = [(f, max(sec - ovh, 0.5 * sec)) for c in steps
               for f, sec in c["conv_points"].get(phase, [])]
        if pts:
            curve[phase] = conv_curve(pts)
    rates = {ph: statistics.median(c[ph] for c in steps if ph in c)
             for ph in ("fwd", "bwd") if any(ph in c for c in steps)}
    layers = _layer_rates(steps, ovh)
    mem_curve = _mem_curve(steps, ovh)
    shapes = sorted({tuple(c.get("shape", ())) for c in steps})
    how = (f"{len(steps)} profiled steps of the model at "
           f"{', '.join('x'.join(map(str, s)) for s in shapes)} "
           f"({time.strftime('%Y-%m-%d %H:%M:%S')}, {torch.get_num_threads()} threads): "
           "conv rate per layer shape and op size, the other ops' bandwidth per op size "
           "(each step's bandwidth at its ops' mean size), an overhead per op fitted")
    return profile.replace(conv_flops_per_s=rates, conv_rate_curve=curve,
                           conv_layer_rates=layers, mem_rate_curve=mem_curve,
                           mem_bytes_per_s=bw, op_overhead_s=ovh,
                           sources={**profile.sources, "calibration": how})


def calibrate_tier(profile: DeviceProfile, model: nn.Module, shapes: Sequence[tuple[int, ...]],
                   loss_fn: Any = None, policy: Any = None
                   ) -> tuple[DeviceProfile, list[dict[str, Any]]]:
    """``profile`` with the disk tier's costs beyond its probes fitted from real steps.

    At each shape, one warm-up and one timed step swapping as ``policy`` says (default:
    everything to disk, prefetch 4) are set against the profile's prediction of that
    step; the shortfall is fitted by least squares as ``copies x disk_copy_overhead_s +
    bytes x disk_copy_s_per_byte``. Returns the profile and the per-shape measurements.
    """
    policy = policy or SwapPolicy(tier="disk", prefetch=4)
    base = profile.replace(disk_copy_overhead_s=0.0, disk_copy_s_per_byte=0.0)
    rows = []
    for shape in shapes:
        x = torch.randn(shape)
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            with swap_activations(model, policy) as st:
                train_step(model, x, loss_fn)
            walls.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        pred = simulate(trace_step(model, tuple(shape), loss_fn), base, policy).step_s
        rows.append({"shape": list(shape), "wall_s": walls[-1], "predicted_s": pred,
                     "copies": 2 * st.swapped, "bytes": st.bytes_out + st.bytes_in})
    # the same least squares as the other ops' fit: gap = bytes * s_per_byte + copies * c
    rate, per_copy = _fit_other([{"other_io_bytes": r["bytes"], "other_ops": r["copies"],
                                      "other_s": max(r["wall_s"] - r["predicted_s"], 1e-9)}
                                     for r in rows])
    return profile.replace(disk_copy_overhead_s=per_copy, disk_copy_s_per_byte=1 / rate,
                           sources={**profile.sources, "disk_copies": (
                               f"fitted from a disk-tier step at each of "
                               f"{', '.join('x'.join(map(str, s)) for s in shapes)}")}), rows

