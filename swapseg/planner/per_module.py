"""Per-module recomputation for the per-storage search: which modules may be rerun, what
rerunning each frees and costs, and how swap indices are numbered beside them.

The engine recomputes by module (a checkpoint around each chosen module), so the
per-storage choice "recompute this storage" is made through the smallest module that
saves it. A module qualifies only when the engine would do exactly what the simulator
models:

- it ran once in the traced step (a checkpoint wraps every call; the trace's op range
  is its first call's);
- a storage saved inside it and again outside (its output, saved by the next op) is
  numbered by ``decide`` at its first save, by the engine at its first save outside;
  the module qualifies only where no other storage comes between
  (``engine_numbering`` is the engine's numbering, worked out from the trace);
- it takes at most one tensor input, saved in the trace no later than the module
  ends. The non-reentrant checkpoint saves its tensor arguments through the outer
  hooks at the module's entry (``_NoopSaveInputs``), so the engine numbers that input
  there; ``decide`` numbers it at its first save, the same place when that save is
  before or inside the module (an input saved nowhere would be an entry the trace
  has no record of).

Inside a recomputed scope the checkpoint's own hooks take the saved tensors, so the
swap engine numbers only the others and the inputs: a plan that swaps and recomputes
names its swap storages in that numbering (``swap_indices``), taken from ``decide``
itself so that the numbering simulated is the numbering that runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from swapseg.offload.policy import RecomputePolicy, SwapPolicy
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.simulate import decide, op_seconds
from swapseg.planner.trace import StepTrace

__all__ = ["Rerun", "reruns", "seen_storages", "swap_indices", "recompute_policy",
           "engine_numbering"]


@dataclass(frozen=True)
class Rerun:
    """A module the plan may recompute: the storages rerunning it frees, and its cost."""

    name: str
    uids: frozenset[int]  # saved storages freed (not its inputs), by trace uid
    nbytes: int
    seconds: float        # its forward ops' predicted time: what the rerun adds


def _inside(scope: str, name: str) -> bool:
    return scope == name or scope.startswith(name + ".")


def _rerun(trace: StepTrace, dev: DeviceProfile, name: str) -> Rerun | None:
    """``name`` as a Rerun, or None when it does not qualify or frees nothing."""
    first, last = trace.module_ops[name]
    if last < first or any(c in name for c in "*?["):
        return None  # a name that reads as a glob would checkpoint other modules too
    inputs = set(trace.module_inputs.get(name, []))
    uniq = trace.unique_saved()
    if len(trace.module_inputs.get(name, [])) > 1 or \
            any(u not in uniq or uniq[u][0].packed_at > last for u in inputs):
        return None
    freed: set[int] = set()
    for uid, recs in uniq.items():
        inside = [_inside(r.scope, name) for r in recs]
        if not any(inside):
            continue
        if any(_inside(r.scope, name) and not first - 1 <= r.packed_at <= last
               for r in recs):
            return None  # called more than once (a save just before its first op is
            # numbered by the op before)
        if all(inside) and uid not in inputs:
            freed.add(uid)
    rc = recompute_policy([name])
    if not freed or engine_numbering(trace, [name]) != seen_storages(trace, rc):
        return None
    nbytes = sum(trace.storages[u].nbytes for u in freed)
    return Rerun(name, frozenset(freed), nbytes,
                 # the simulator's own op cost: the greedy pass weighs a rerun as the
                 # simulation of its plan will
                 sum(op_seconds(dev, trace.ops[i]) for i in range(first, last + 1)))


def reruns(trace: StepTrace, dev: DeviceProfile) -> list[Rerun]:
    """Every module (at any depth, the root excluded) that qualifies and frees a saved
    storage, in forward order."""
    out = []
    for name in sorted(trace.module_ops, key=lambda n: trace.module_ops[n]):
        if name:
            r = _rerun(trace, dev, name)
            if r is not None:
                out.append(r)
    return out


def engine_numbering(trace: StepTrace, modules: Iterable[str]) -> list[int]:
    """Uids in the order the swap engine makes their entries when ``modules`` are
    checkpointed: records saved inside one go to the checkpoint's hooks; entering one
    saves its tensor inputs through the engine's hooks; a storage is numbered at the
    first save the engine sees."""
    mods = list(modules)
    order: dict[int, None] = {}
    entered: set[str] = set()
    for rec in trace.saved:
        region = next((m for m in mods if _inside(rec.scope, m)), None)
        if region is None:
            order.setdefault(rec.uid)
        elif region not in entered:
            entered.add(region)
            for u in trace.module_inputs.get(region, []):
                order.setdefault(u)
    return list(order)


def recompute_policy(modules: Iterable[str]) -> RecomputePolicy | None:
    """The engine's policy for ``modules`` (exact names, full mode; None for none)."""
    names = tuple(sorted(set(modules)))
    return RecomputePolicy(scopes=names, mode="full") if names else None


def seen_storages(trace: StepTrace, recompute: RecomputePolicy | None) -> list[int]:
    """Uids of the storages the swap engine's hooks see under ``recompute``, in the
    order it numbers them (``SwapPolicy.storages``): ``decide``'s own numbering, read by
    asking it to swap every index."""
    every = SwapPolicy(storages=tuple(range(len(trace.unique_saved()))))
    fate = decide(trace, every, recompute).fate
    return [u for u, f in fate.items() if f == "swap"]


def swap_indices(trace: StepTrace, swap_uids: Iterable[int],
                 recompute: RecomputePolicy | None) -> tuple[int, ...]:
    """``SwapPolicy.storages`` for the storages ``swap_uids`` beside ``recompute``
    (those it hides from the engine are dropped)."""
    want = set(swap_uids)
    return tuple(i for i, u in enumerate(seen_storages(trace, recompute)) if u in want)
