"""Per-storage plans: which saved storages to swap, decided one by one on the timeline.

The named candidates move whole module groups; a budget between two of them, or below
all of them, is reached by choosing storages. A greedy pass over the simulated
timeline: at the step's peak op, the storages saved before it and needed after it are
what swapping can free there. Those whose copy-out and copy-in fit in the time between
their save and their first use (the link's transfer window) go first, largest first,
until the bytes freed cover the excess; then the plan is simulated again, and the pass
repeats at the new peak. A pruning pass then keeps on the device, latest saved first
(backward needs those soonest, so their copies are the likeliest to stall it), every
storage whose swap the plan can do without: it still fits and is predicted no slower.
Both sets are offered at several prefetch depths and, on the disk tier, several
in-flight bounds; the search simulates each and keeps the fastest that fits. Plans
name storages by forward index (``SwapPolicy.storages``), so the engine carries them
out exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.simulate import SimResult, simulate, swap_mode
from swapseg.planner.trace import StepTrace

__all__ = ["storage_plans", "greedy_set", "prune", "PREFETCH_DEPTHS", "INFLIGHT_BOUNDS"]

#: Prefetch depths each per-storage set is offered at.
PREFETCH_DEPTHS = (1, 2, 4, 8, 20)

#: In-flight bounds (bytes; -1 the tier's default) tried where the simulator models one
#: (the disk tier): a larger bound lets forward run ahead of a slow disk.
INFLIGHT_BOUNDS = (-1, 2**30, 2 * 2**30)

#: Re-simulations the greedy pass may take before it gives up.
MAX_ROUNDS = 24

#: Storages the pruning pass tries to keep (one simulation each).
MAX_PRUNE = 64

#: The prefetch depth the greedy and pruning passes simulate at.
PASS_PREFETCH = 8


@dataclass(frozen=True)
class _Storage:
    index: int        # forward index among the unique saved storages
    nbytes: int
    packed_at: int    # op that saved it
    first_use: int    # first backward op that unpacks it
    in_window: bool   # its copy-out and copy-in fit between save and first use


def _storages(trace: StepTrace, dev: DeviceProfile, keep: SimResult) -> list[_Storage]:
    starts, ends = keep.timeline["op_start_s"], keep.timeline["op_end_s"]
    disk = swap_mode(SwapPolicy(), dev) == "disk"
    out_rate = dev.disk_write_bytes_per_s if disk else dev.d2h_bytes_per_s
    in_rate = dev.disk_read_bytes_per_s if disk else dev.h2d_bytes_per_s
    out: list[_Storage] = []
    for i, recs in enumerate(trace.unique_saved().values()):
        uses = [x for r in recs for x in r.uses]
        if not uses:
            continue
        first, packed, n = min(uses), recs[0].packed_at, recs[0].nbytes
        window = starts[first] - ends[max(packed, 0)]
        out.append(_Storage(i, n, packed, first, window >= n / out_rate + n / in_rate))
    return out


def greedy_set(trace: StepTrace, dev: DeviceProfile, usable: int,
               keep: SimResult) -> tuple[int, ...]:
    """Forward indices of the storages the greedy pass swaps to bring the predicted peak
    under ``usable`` (as few as it can; empty when nothing saved can help)."""
    storages = _storages(trace, dev, keep)
    chosen: set[int] = set()
    r = keep
    for _ in range(MAX_ROUNDS):
        if r.peak_bytes <= usable:
            break
        mem = r.timeline["memory_bytes"]
        at = max(range(len(mem)), key=mem.__getitem__)
        live = [s for s in storages if s.index not in chosen and s.packed_at < at < s.first_use]
        if not live:
            break
        live.sort(key=lambda s: (s.in_window, s.nbytes), reverse=True)
        freed, excess = 0, r.peak_bytes - usable
        for s in live:
            chosen.add(s.index)
            freed += s.nbytes
            if freed >= excess:
                break
        r = simulate(trace, dev, SwapPolicy(storages=tuple(sorted(chosen)),
                                            prefetch=PASS_PREFETCH))
    return tuple(sorted(chosen))


def prune(trace: StepTrace, dev: DeviceProfile, usable: int,
          chosen: tuple[int, ...]) -> tuple[int, ...]:
    """``chosen`` less the storages, latest saved first, whose swap the plan can do
    without: it still fits ``usable`` and is predicted no slower."""
    keep = list(chosen)

    def run(storages: list[int]) -> SimResult:
        return simulate(trace, dev, SwapPolicy(storages=tuple(storages),
                                               prefetch=PASS_PREFETCH))

    best = run(keep)
    if best.peak_bytes > usable:
        return chosen
    for i in sorted(chosen, reverse=True)[:MAX_PRUNE]:
        trial = [x for x in keep if x != i]
        if not trial:
            break
        r = run(trial)
        if r.peak_bytes <= usable and r.step_s <= best.step_s:
            keep, best = trial, r
    return tuple(keep)


def storage_plans(trace: StepTrace, dev: DeviceProfile, usable: int,
                  keep: SimResult) -> list[MemoryPlan]:
    """The greedy set and its pruned subset at every prefetch depth (and in-flight bound
    on the disk tier)."""
    greedy = greedy_set(trace, dev, usable, keep)
    if not greedy:
        return []
    sets = [greedy]
    pruned = prune(trace, dev, usable, greedy)
    if pruned != greedy:
        sets.append(pruned)
    bounds = INFLIGHT_BOUNDS if swap_mode(SwapPolicy(), dev) == "disk" else (-1,)
    plans = []
    for chosen in sets:
        for pf in PREFETCH_DEPTHS:
            for b in bounds:
                name = f"per-storage-{len(chosen)}-pf{pf}" + (f"-inflight{b >> 20}MiB"
                                                               if b >= 0 else "")
                plans.append(MemoryPlan(SwapPolicy(storages=chosen, prefetch=pf,
                                                   max_inflight_bytes=b), name=name))
    return plans
