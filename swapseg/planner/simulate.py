"""Simulate one training step on a device profile: compute lane, two copy lanes, memory.

Input: a :class:`~swapseg.planner.trace.StepTrace`, a device profile and a plan
(swap policy and/or recompute policy). Output: predicted step time, stall time, peak
device bytes (everything: parameters, optimizer state, gradients, live activations and
op temporaries) and peak saved bytes resident (what the engine's ``peak_saved_bytes``
counts), plus the timeline as data.

Semantics follow the engine (docs/swapping.md): a swapped storage leaves the device once its
copy-out ends and no forward code still holds it; in backward, the first unpack of the
entry at position p of the unpack order (every storage the engine's hooks see, kept or
swapped) starts the swap-in of positions p+1..p+prefetch, the first window starts when
backward starts, and a swap-in cannot start before the copy-out of the
same storage ended. A swap-in's buffer is resident from the moment the engine asks for
it (the transport allocates it then), though the lane may still be busy with earlier
copies. Recomputed scopes rerun their forward ops just before the first
backward op that needs one of their saved tensors.

The first step is simulated apart: with no unpack order learned yet, the engine
prefetches in reverse forward order; a storage needed out of that order is copied in on
demand, one prefetched early stays resident longer. ``peak_bytes`` is the higher of the
first and later steps' peaks, so a plan that fits fits on every step.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swapseg.offload.engine import inflight_bound
from swapseg.offload.policy import (
    SPEED_KEEP_OPS,
    RecomputePolicy,
    SwapPolicy,
    concrete_tier,
    scope_matches,
)
from swapseg.planner.diskcost import DISK_COPY_SLACK, cached_storages, copy_extra, cpu_rates
from swapseg.planner.profiles import DeviceProfile, layer_key
from swapseg.planner.rerun import rerun_transients
from swapseg.planner.trace import StepTrace

__all__ = ["Decision", "SimResult", "decide", "simulate", "swap_mode", "device_type",
           "op_seconds"]

KEEP, SWAP, RECOMPUTE = "keep", "swap", "recompute"


@dataclass
class Decision:
    """What happens to each saved storage under a plan."""
    fate: dict[int, str]                 # storage uid -> keep | swap | recompute
    regions: dict[str, int]              # recomputed region -> bwd op index it reruns before
    region_ops: dict[str, list[int]]     # region -> fwd op indices rerun
    region_inputs: dict[str, list[int]]  # region -> storage uids kept as checkpoint inputs

    def count(self, fate: str) -> int:
        return sum(1 for f in self.fate.values() if f == fate)


def _regions(trace: StepTrace, rc: RecomputePolicy) -> list[str]:
    chosen: list[str] = []
    for name in sorted(trace.module_ops, key=lambda n: trace.module_ops[n][0]):
        if scope_matches(name, rc.scopes) and \
                not any(name.startswith(c + ".") for c in chosen):
            chosen.append(name)
    return chosen


def decide(trace: StepTrace, swap: SwapPolicy | None,
           recompute: RecomputePolicy | None) -> Decision:
    uniq = trace.unique_saved()   # uid -> records, in pack order of their first pack
    fate = {uid: KEEP for uid in uniq}
    regions: dict[str, int] = {}
    region_ops: dict[str, list[int]] = {}
    region_inputs: dict[str, list[int]] = {}
    # saved inside a checkpointed region: recomputed or kept by the selective-checkpoint
    # cache (speed mode); the engine's hooks see only the region's inputs (at its entry)
    in_region: set[int] = set()
    if recompute is not None:
        for r in _regions(trace, recompute):
            first, last = trace.module_ops[r]
            ops = list(range(first, last + 1))
            mine = [uid for uid, recs in uniq.items()  # one saved outside too stays
                    if all(x.scope == r or x.scope.startswith(r + ".") for x in recs)]
            in_region.update(u for u in mine if u not in trace.module_inputs.get(r, []))
            if recompute.mode == "speed":  # conv and matmul outputs stay saved
                mine = [u for u in mine if trace.storages[u].producer not in SPEED_KEEP_OPS]
                ops = [i for i in ops if trace.ops[i].name not in SPEED_KEEP_OPS]
            mine = [u for u in mine if u not in trace.module_inputs.get(r, [])]
            if not mine:
                continue
            for u in mine:
                fate[u] = RECOMPUTE
            uses = [min(x.uses) for u in mine for x in uniq[u] if x.uses]
            regions[r] = min(uses) if uses else trace.n_fwd_ops
            region_ops[r] = ops
            region_inputs[r] = list(trace.module_inputs.get(r, []))
    if swap is not None and swap.storages:  # per storage: forward index among the
        # storages the engine's hooks see (those inside a recomputed scope are not)
        seen = [u for u in uniq if u not in in_region]
        for i in swap.storages:
            if i < len(seen):
                fate[seen[i]] = SWAP
    elif swap is not None:
        n = 0
        for uid, recs in uniq.items():
            if fate[uid] != KEEP or uid in in_region or recs[0].nbytes < swap.min_bytes:
                continue
            scope = recs[0].scope
            if swap.include and not scope_matches(scope, swap.include):
                continue
            if swap.exclude and scope_matches(scope, swap.exclude):
                continue
            if swap.n_tensors != -1 and n >= swap.n_tensors:
                break
            # swapped; but a later pack in an excluded scope makes a kept entry of its
            # own in the engine, which holds the storage on the device until backward
            fate[uid] = KEEP if swap.exclude and any(
                scope_matches(r.scope, swap.exclude) for r in recs[1:]) else SWAP
            n += 1
    return Decision(fate, regions, region_ops, region_inputs)


@dataclass(frozen=True)
class SimResult:
    step_s: float
    compute_s: float
    stall_s: float
    recompute_s: float
    peak_bytes: int
    peak_saved_bytes: int
    swapped_tensors: int
    swapped_bytes: int
    recomputed_tensors: int
    first_step_peak_bytes: int = 0
    """The first step's own peak (no learned unpack order yet); within ``peak_bytes``."""
    timeline: dict[str, Any] = field(repr=False, default_factory=dict, compare=False)

    def as_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("step_s", "compute_s", "stall_s", "recompute_s",
                                            "peak_bytes", "peak_saved_bytes", "swapped_tensors",
                                            "swapped_bytes", "recomputed_tensors",
                                            "first_step_peak_bytes")}
        if with_timeline:
            d["timeline"] = self.timeline
        return d


def device_type(dev: DeviceProfile) -> str:
    """The torch device type a profile stands for: ``cpu`` where device memory is host
    memory, ``cuda`` otherwise (what ``MemoryPlan.concrete`` takes)."""
    return "cpu" if dev.unified_memory else "cuda"


def swap_mode(swap: SwapPolicy | None, dev: DeviceProfile) -> str:
    """How a plan's swapped bytes travel on ``dev``: ``link`` (the d2h/h2d copy engine),
    ``disk`` (files, at the disk's bandwidth beyond the page cache) or ``same-memory``
    (a host-tier copy on a device whose memory is host memory: it frees nothing). The
    tier is made concrete for the device first (``concrete_tier``)."""
    tier = concrete_tier(swap.tier if swap is not None else "auto", device_type(dev))
    if tier == "disk" and dev.models_disk:
        return "disk"
    if tier == "host" and dev.unified_memory:
        return "same-memory"
    return "link"


def op_seconds(dev: DeviceProfile, op: Any) -> float:
    """One traced op's predicted time on ``dev`` (conv ops by their calibrated layer)."""
    return dev.op_seconds(op.flops, op.io_bytes, op.phase if op.conv else "",
                          layer_key(op.phase, op.conv))


def _run_lanes(trace: StepTrace, dev: DeviceProfile, dec: Decision,
               prefetch: int, mode: str = "link", inflight_max: int | None = None,
               first_step: bool = False) -> dict[str, Any]:
    """Walk the ops in order; returns op start/end times and copy intervals per storage.

    Prefetch windows run over the unpack order of all entries the engine learned in the
    step before; on the ``first_step`` over their reverse forward order."""
    uniq = trace.unique_saved()
    swapped = [u for u, f in dec.fate.items() if f == SWAP]
    is_swapped = set(swapped)
    first_use = {u: min((x for r in recs for x in r.uses), default=len(trace.ops))
                 for u, recs in uniq.items()}
    # the engine's entries (every storage its hooks see), in the order backward unpacks
    # them: each first unpack, kept or swapped, starts the next window
    order = sorted((u for u in uniq if dec.fate[u] != RECOMPUTE), key=first_use.__getitem__)
    if first_step:  # no order learned yet: reverse forward order
        order = [u for u in reversed(list(uniq)) if dec.fate[u] != RECOMPUTE]
    pos = {u: i for i, u in enumerate(order)}
    out_at = {u: uniq[u][0].packed_at for u in swapped}
    outs_by_op: dict[int, list[int]] = {}
    for u, i in out_at.items():
        outs_by_op.setdefault(i, []).append(u)
    needs: dict[int, list[int]] = {}
    for u in order:
        needs.setdefault(first_use[u], []).append(u)
    rerun_at: dict[int, list[str]] = {}
    for r, i in dec.regions.items():
        rerun_at.setdefault(i, []).append(r)
    disk = mode == "disk"
    cached = cached_storages(trace, swapped, out_at, dev.disk_cache_bytes) if disk else set()
    written = 0
    out_rate, in_rate = cpu_rates(dev, disk)
    # the engine makes forward wait while more copy-out bytes than ``inflight_max`` are
    # in flight (modelled for the disk tier, the only one with a bound by default)
    bound = inflight_max if disk and inflight_max is not None else float("inf")
    inflight: collections.deque[tuple[float, int, int]] = collections.deque()
    inflight_bytes = 0
    t = d2h_free = h2d_free = stall = rec_s = 0.0
    copy_out: dict[int, tuple[float, float]] = {}
    copy_in: dict[int, tuple[float, float]] = {}
    asked: dict[int, float] = {}  # the engine allocates a copy-in's buffer when it asks
    left: dict[int, float] = {}   # when a copied-out storage surely left the device
    starts, ends, stalls = [], [], []
    reruns: list[tuple[float, float]] = []

    def swap_in(u: int, now: float) -> None:
        nonlocal h2d_free, t
        if u in copy_in or u not in is_swapped or u not in copy_out:
            return  # kept, or not packed yet (a checkpoint's rerun packs in backward)
        s = max(now, h2d_free, copy_out[u][1])
        n = trace.storages[u].nbytes
        cpu = n / in_rate  # the cores' part; a disk read adds the device's time
        d = n / dev.disk_read_bytes_per_s if disk and u not in cached else cpu
        copy_in[u], asked[u] = (s, s + d), max(now, copy_out[u][1])
        h2d_free = copy_in[u][1]
        if dev.copies_share_compute:
            t += cpu + copy_extra(dev, n, disk)

    def start_outs(i: int) -> None:
        nonlocal d2h_free, t, written, inflight_bytes, stall
        for u in outs_by_op.get(i, []):
            s = max(t, d2h_free)
            n = trace.storages[u].nbytes
            cpu = n / out_rate
            written += n  # past the page cache's share, a write runs at the disk's pace
            to_disk = disk and written > dev.disk_cache_bytes
            d = n / dev.disk_write_bytes_per_s if to_disk else cpu
            copy_out[u] = (s, s + d)
            left[u] = s + d * (DISK_COPY_SLACK if to_disk else 1.0)
            d2h_free = copy_out[u][1]
            if dev.copies_share_compute:
                t += cpu + copy_extra(dev, n, disk)
            if disk:
                inflight.append((s + d, n, u))
                inflight_bytes += n
        while inflight and (inflight[0][0] <= t or inflight_bytes > bound):
            end, n, v = inflight.popleft()
            inflight_bytes -= n
            if end > t:  # forward waits for this write: then it surely ended
                left[v] = min(left[v], end)
                stalls.append((t, end))
                stall += end - t
                t = end

    start_outs(-1)  # saved before the first op ran (the step's input, saved by op 0)
    for op in trace.ops:
        i = op.index
        if i == trace.n_fwd_ops:
            for u in order[:prefetch]:
                swap_in(u, t)
        for r in rerun_at.get(i, []):
            d = sum(op_seconds(dev, trace.ops[j]) for j in dec.region_ops[r])
            reruns.append((t, t + d))
            rec_s += d
            t += d
        for u in needs.get(i, []):
            swap_in(u, t)
            for v in order[pos[u] + 1: pos[u] + 1 + prefetch]:
                swap_in(v, t)
            if u in is_swapped and copy_in[u][1] > t:
                stalls.append((t, copy_in[u][1]))
                stall += copy_in[u][1] - t
                t = copy_in[u][1]
        starts.append(t)
        t += op_seconds(dev, op)
        ends.append(t)
        start_outs(i)  # packed during op i (or just before op i+1): copy once it is done
    return {"starts": starts, "ends": ends, "copy_out": copy_out, "copy_in": copy_in,
            "asked": asked, "left": left, "stalls": stalls, "reruns": reruns, "stall_s": stall,
            "recompute_s": rec_s, "step_s": t}


def _memory(trace: StepTrace, dec: Decision, lanes: dict[str, Any],
            workspace: bool) -> tuple[Any, Any]:
    """Bytes resident per op (all, and saved only), from storage lives and the plan."""
    n = len(trace.ops)
    ends = lanes["ends"]
    total = np.zeros(n + 1)
    saved = np.zeros(n + 1)
    uniq = trace.unique_saved()

    def last_op_by(time_s: float) -> int:
        """The op running when something ends at ``time_s`` (an op ending then counts)."""
        return min(bisect.bisect_left(ends, time_s), n - 1)

    def op_from(time_s: float) -> int:
        """The op running when something starts at ``time_s`` (the next op at a boundary)."""
        return min(bisect.bisect_right(ends, time_s), n - 1)

    def add(arr: np.ndarray, a: int, b: int, nbytes: int) -> None:
        if b >= a:
            arr[max(a, 0)] += nbytes
            arr[b + 1] -= nbytes

    if workspace:  # op-internal buffers, alive only while their op runs
        for op in trace.ops:
            add(total, op.index, op.index, op.cpu_workspace_bytes)
    keep_until = {}
    for r, i in dec.regions.items():
        for u in dec.region_inputs[r]:
            keep_until[u] = max(keep_until.get(u, -1), i)
    for s in trace.storages.values():
        fwd_end = n - 1 if s.freed_at is None else s.freed_at
        fwd_end = max(fwd_end, keep_until.get(s.uid, -1))
        if s.uid not in uniq:
            add(total, s.produced_at, fwd_end, s.nbytes)
            continue
        recs = uniq[s.uid]
        release = max(r.released_at if r.released_at is not None else n - 1 for r in recs)
        packed = recs[0].packed_at
        fate = dec.fate[s.uid]
        if fate == KEEP:
            add(total, s.produced_at, max(fwd_end, release), s.nbytes)
            add(saved, packed, release, s.nbytes)
        elif fate == SWAP:
            out_end = last_op_by(lanes["left"][s.uid])
            in_start = op_from(lanes["asked"][s.uid])
            add(total, s.produced_at, max(fwd_end, out_end), s.nbytes)
            add(saved, packed, out_end, s.nbytes)
            add(total, max(in_start, max(fwd_end, out_end) + 1), release, s.nbytes)
            add(saved, max(in_start, out_end + 1), release, s.nbytes)
        else:  # recomputed: forward life, then again from the rerun to its release
            region = next(r for r in dec.regions
                          if recs[0].scope == r or recs[0].scope.startswith(r + "."))
            add(total, s.produced_at, fwd_end, s.nbytes)
            add(total, max(dec.regions[region], fwd_end + 1), release, s.nbytes)
    saved_uids = set(uniq)
    for r, at in dec.regions.items():  # a rerun makes its region's transients again
        add(total, min(at, n - 1), min(at, n - 1),
            rerun_transients(trace, dec.region_ops[r], saved_uids, workspace))
    return np.cumsum(total)[:n], np.cumsum(saved)[:n]


def simulate(trace: StepTrace, dev: DeviceProfile, swap: SwapPolicy | None = None,
             recompute: RecomputePolicy | None = None) -> SimResult:
    """Predict one step under the plan ``(swap, recompute)``, its tier made concrete for
    ``dev`` first, so the plan simulated is the plan that runs."""
    swap = swap.concrete(device_type(dev)) if swap is not None else None
    dec = decide(trace, swap, recompute)
    mode = swap_mode(swap, dev)
    bound = inflight_bound(dataclasses.replace(swap, tier="disk")) if swap else None
    prefetch = swap.prefetch if swap else 1
    lanes = _run_lanes(trace, dev, dec, prefetch, mode, bound)
    mem, saved = _memory(trace, dec, lanes, dev.cpu_conv_workspace)
    base = trace.persistent_bytes
    swapped = [u for u, f in dec.fate.items() if f == SWAP]
    if mode == "same-memory":  # the host pool's buffers live in the device's memory
        base += sum(trace.storages[u].nbytes for u in swapped)
    first = int(mem.max() + base)
    if swapped:  # the first step prefetches by another order
        first_mem, _ = _memory(trace, dec, _run_lanes(trace, dev, dec, prefetch, mode, bound,
                                                      first_step=True),
                               dev.cpu_conv_workspace)
        first = int(first_mem.max() + base)
    compute = sum(e - s for s, e in zip(lanes["starts"], lanes["ends"], strict=True))
    timeline = {
        "op_start_s": lanes["starts"], "op_end_s": lanes["ends"],
        "phase": [o.phase for o in trace.ops],
        "memory_bytes": (mem + base).tolist(), "saved_bytes": saved.tolist(),
        "copy_out_s": [list(v) for v in lanes["copy_out"].values()],
        "copy_in_s": [list(v) for v in lanes["copy_in"].values()],
        "stalls_s": [list(v) for v in lanes["stalls"]],
        "recompute_s_intervals": [list(v) for v in lanes["reruns"]],
        "fwd_end_s": lanes["ends"][trace.n_fwd_ops - 1],
    }
    return SimResult(
        step_s=lanes["step_s"], compute_s=compute, stall_s=lanes["stall_s"],
        recompute_s=lanes["recompute_s"], peak_bytes=max(int(mem.max() + base), first),
        peak_saved_bytes=int(saved.max()), swapped_tensors=len(swapped),
        swapped_bytes=sum(trace.storages[u].nbytes for u in swapped),
        recomputed_tensors=dec.count(RECOMPUTE), first_step_peak_bytes=first,
        timeline=timeline)
