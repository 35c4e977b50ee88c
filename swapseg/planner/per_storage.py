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

A second pass (``mixed_set``) may also rerun modules (``swapseg.planner.per_module``):
at each peak it weighs every storage still kept (cost: the stall its round trip adds
beyond its window) against every module not yet rerun (cost: its forward ops' time) by
bytes freed per predicted second, so cheap reruns replace swaps the link cannot carry
in time. Its plan, pruned the same way, is offered beside the swap sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.planner.per_module import Rerun, recompute_policy, reruns, swap_indices
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.simulate import SimResult, simulate, swap_mode
from swapseg.planner.trace import StepTrace

__all__ = ["storage_plans", "greedy_set", "prune", "Mixed", "mixed_set", "prune_mixed",
           "PREFETCH_DEPTHS", "INFLIGHT_BOUNDS"]

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
    uid: int = -1     # trace uid
    stall_s: float = 0.0  # how much longer its round trip takes than its window
    out_s: float = 0.0    # its copy-out's time on the link


def _storages(trace: StepTrace, dev: DeviceProfile, keep: SimResult) -> list[_Storage]:
    starts, ends = keep.timeline["op_start_s"], keep.timeline["op_end_s"]
    disk = swap_mode(SwapPolicy(), dev) == "disk"
    out_rate = dev.disk_write_bytes_per_s if disk else dev.d2h_bytes_per_s
    in_rate = dev.disk_read_bytes_per_s if disk else dev.h2d_bytes_per_s
    out: list[_Storage] = []
    for i, (uid, recs) in enumerate(trace.unique_saved().items()):
        uses = [x for r in recs for x in r.uses]
        if not uses:
            continue
        first, packed, n = min(uses), recs[0].packed_at, recs[0].nbytes
        window = starts[first] - ends[max(packed, 0)]
        trip = n / out_rate + n / in_rate
        out.append(_Storage(i, n, packed, first, window >= trip, uid, max(0.0, trip - window),
                            n / out_rate))
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


@dataclass(frozen=True)
class Mixed:
    """A per-storage plan that swaps and recomputes: storages by trace uid, modules by
    name (``plan`` numbers the storages as the engine will)."""

    swap: frozenset[int]
    modules: tuple[str, ...]

    def plan(self, trace: StepTrace, prefetch: int = PASS_PREFETCH,
             inflight: int = -1) -> MemoryPlan:
        rc = recompute_policy(self.modules)
        idx = swap_indices(trace, self.swap, rc)
        swap = SwapPolicy(storages=idx, prefetch=prefetch,
                          max_inflight_bytes=inflight) if idx else None
        return MemoryPlan(swap, rc, f"per-storage-{len(idx)}s-{len(self.modules)}r")

    def run(self, trace: StepTrace, dev: DeviceProfile) -> SimResult:
        p = self.plan(trace)
        return simulate(trace, dev, p.swap, p.recompute)


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _actions(storages: list[_Storage], options: list[Rerun], m: Mixed, at: int,
             trace: StepTrace, excess: int) -> list[tuple[float, int, Rerun | _Storage]]:
    """(bytes freed at op ``at`` per predicted second, bytes, action) for every storage
    still kept and every module not yet rerun: a swap costs the stall it is predicted
    to add (none inside its transfer window), a rerun its forward ops' time. Bytes past
    ``excess`` count for nothing, so a module much larger than needed (whose rerun
    rebuilds all it saved at once) loses to the smaller ones that suffice."""
    chosen = [o for o in options if o.name in m.modules]
    hidden = {u for o in chosen for u in o.uids}
    inputs = {u for o in chosen for u in trace.module_inputs.get(o.name, [])}
    live = {s.uid: s for s in storages if s.packed_at < at < s.first_use}
    out: list[tuple[float, int, Rerun | _Storage]] = []
    for s in live.values():
        if s.uid not in m.swap and s.uid not in hidden and s.uid not in inputs:
            out.append((min(s.nbytes, excess) / (s.stall_s + 1e-12), s.nbytes, s))
    for o in options:
        if any(_nested(o.name, c.name) for c in chosen):
            continue
        gain = sum(live[u].nbytes for u in o.uids if u in live and u not in m.swap)
        if gain:
            out.append((min(gain, excess) / (o.seconds + 1e-12), gain, o))
    out.sort(key=lambda a: (a[0], a[1]), reverse=True)
    return out


def _round(trace: StepTrace, storages: list[_Storage], options: list[Rerun], m: Mixed,
           r: SimResult, usable: int) -> Mixed:
    """``m`` with the actions that free the excess at ``r``'s peak op, best first."""
    mem = r.timeline["memory_bytes"]
    at = max(range(len(mem)), key=mem.__getitem__)
    freed, excess = 0, r.peak_bytes - usable
    swap, mods = set(m.swap), list(m.modules)
    # the link copies one storage at a time: a swap frees nothing at the peak when the
    # copy-outs queued before it take longer than forward has run by then
    t_at = r.timeline["op_start_s"][at]
    busy = sum(s.out_s for s in storages if s.uid in swap and s.packed_at < at)
    for _score, gain, a in _actions(storages, options, m, at, trace, excess):
        if isinstance(a, Rerun):
            if any(_nested(a.name, x) for x in mods):
                continue
            mods.append(a.name)
            swap -= a.uids | set(trace.module_inputs.get(a.name, []))
        elif busy + a.out_s > t_at:
            continue
        else:
            swap.add(a.uid)
            busy += a.out_s
        freed += gain
        if freed >= excess:
            break
    return Mixed(frozenset(swap), tuple(mods))


def mixed_set(trace: StepTrace, dev: DeviceProfile, usable: int,
              keep: SimResult) -> Mixed:
    """The greedy pass choosing, at each peak, between swapping a storage and rerunning
    a module by bytes freed per predicted second, until the plan fits ``usable``.

    A rerun rebuilds all its module saved at once in backward, so a large module can
    raise the peak it lowered in forward: a round whose new reruns do not lower the
    peak is undone and those modules are not offered again (their parts still are)."""
    storages = _storages(trace, dev, keep)
    options = reruns(trace, dev)
    m, r = Mixed(frozenset(), ()), keep
    for _ in range(2 * MAX_ROUNDS):
        if r.peak_bytes <= usable:
            break
        nxt = _round(trace, storages, options, m, r, usable)
        if nxt == m:
            break
        res = nxt.run(trace, dev)
        added = set(nxt.modules) - set(m.modules)
        if added and res.peak_bytes >= r.peak_bytes:
            options = [o for o in options if o.name not in added]
            continue
        m, r = nxt, res
    return m


def prune_mixed(trace: StepTrace, dev: DeviceProfile, usable: int, m: Mixed) -> Mixed:
    """``m`` less the reruns, then the swaps (latest saved first), the plan can do
    without: it still fits ``usable`` and is predicted no slower."""
    best = m.run(trace, dev)
    if best.peak_bytes > usable:
        return m
    pos = {u: i for i, u in enumerate(trace.unique_saved())}
    trials = [("r", x) for x in reversed(m.modules)] + \
        [("s", u) for u in sorted(m.swap, key=pos.__getitem__, reverse=True)][:MAX_PRUNE]
    for kind, x in trials:
        trial = Mixed(m.swap, tuple(y for y in m.modules if y != x)) if kind == "r" \
            else Mixed(m.swap - {x}, m.modules)
        r = trial.run(trace, dev)
        if r.peak_bytes <= usable and r.step_s <= best.step_s:
            m, best = trial, r
    return m


def _variants(plan: MemoryPlan, disk: bool) -> list[MemoryPlan]:
    """``plan`` at every prefetch depth (and in-flight bound on the disk tier)."""
    if plan.swap is None:
        return [plan]
    out = []
    for pf in PREFETCH_DEPTHS:
        for b in INFLIGHT_BOUNDS if disk else (-1,):
            name = f"{plan.name}-pf{pf}" + (f"-inflight{b >> 20}MiB" if b >= 0 else "")
            out.append(plan.replace(swap=plan.swap.replace(prefetch=pf, max_inflight_bytes=b),
                                    name=name))
    return out


def storage_plans(trace: StepTrace, dev: DeviceProfile, usable: int,
                  keep: SimResult, recompute: bool = True) -> list[MemoryPlan]:
    """The greedy swap set and its pruned subset, and (``recompute``) the greedy
    swap-and-rerun plan and its pruned one, at every prefetch depth (and in-flight
    bound on the disk tier)."""
    sets = []
    greedy = greedy_set(trace, dev, usable, keep)
    if greedy:
        sets.append(greedy)
        pruned = prune(trace, dev, usable, greedy)
        if pruned != greedy:
            sets.append(pruned)
    plans = [MemoryPlan(SwapPolicy(storages=c), name=f"per-storage-{len(c)}") for c in sets]
    if recompute:
        mixed = mixed_set(trace, dev, usable, keep)
        for x in dict.fromkeys([mixed, prune_mixed(trace, dev, usable, mixed)]):
            if x.modules:  # without a rerun it is a swap set like the ones above
                plans.append(x.plan(trace))
    disk = swap_mode(SwapPolicy(), dev) == "disk"
    return [v for p in plans for v in _variants(p, disk)]
