"""Search swap / recompute / hybrid plans; pick the fastest predicted one under a budget.

Candidates come from the traced step and the model's own module tree, so they work for
any model and assume no module name: keep all; swap all at several prefetch distances
(and, where the tier bounds the bytes in flight, at larger bounds); the first N saved
tensors in forward order; module groups (each top-level child, and depth-first halves
of the tree) swapped alone or kept while the rest is swapped;
recomputation (full and speed) of each group and of everything; hybrids that recompute
one group and swap the rest; and, when keeping everything does not fit, per-storage
plans (``swapseg.planner.per_storage``). Domain code adds its own candidates through
``search(..., extra=...)`` (the paper's configurations live in ``swapseg.experiments``).
Every plan is made concrete for the profile's device before it is simulated, so the
plan simulated is the plan that runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan, RecomputePolicy, SwapPolicy
from swapseg.planner.per_storage import storage_plans
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.simulate import SimResult, device_type, simulate
from swapseg.planner.trace import StepTrace

__all__ = ["Candidate", "SearchResult", "candidates", "module_groups", "search", "rank",
           "pareto_front", "DEFAULT_MARGIN"]

#: Fraction of the budget kept free for what the simulator does not see (allocator
#: fragmentation, library workspaces, the CUDA context).
DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class Candidate:
    """One row of the search: a plan, its predicted result, whether it fits."""

    plan: MemoryPlan
    result: SimResult
    fits: bool

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def swap(self) -> SwapPolicy | None:
        return self.plan.swap

    @property
    def recompute(self) -> RecomputePolicy | None:
        return self.plan.recompute

    def row(self, baseline_s: float) -> dict[str, Any]:
        r = self.result
        return {
            "name": self.name,
            "swapped_tensors": r.swapped_tensors,
            "swapped_bytes": r.swapped_bytes,
            "recomputed_tensors": r.recomputed_tensors,
            "peak_bytes": r.peak_bytes,
            "first_step_peak_bytes": r.first_step_peak_bytes,
            "peak_saved_bytes": r.peak_saved_bytes,
            "step_s": r.step_s,
            "stall_s": r.stall_s,
            "recompute_s": r.recompute_s,
            "overhead": r.step_s / baseline_s - 1 if baseline_s else 0.0,
            "fits": self.fits,
            "swap": self.swap.to_dict() if self.swap else None,
            "recompute": self.recompute.to_dict() if self.recompute else None,
        }


@dataclass(frozen=True)
class SearchResult:
    """Every evaluated plan (keep-all first) and the chosen one; immutable."""

    trace_summary: dict[str, Any]
    device: DeviceProfile
    budget_bytes: int
    margin: float
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None

    @property
    def usable_bytes(self) -> int:
        return int(self.budget_bytes * (1 - self.margin))

    @property
    def front(self) -> tuple[Candidate, ...]:
        """The Pareto front of predicted peak against predicted step time."""
        return pareto_front(self.candidates)

    def as_dict(self) -> dict[str, Any]:
        base = self.candidates[0].result.step_s if self.candidates else 0.0  # keep-all
        return {
            "trace": self.trace_summary,
            "device": self.device.to_dict(),
            "budget_bytes": self.budget_bytes,
            "margin": self.margin,
            "usable_bytes": self.usable_bytes,
            "candidates": [c.row(base) for c in self.candidates],
            "front": [{"name": c.name, "peak_bytes": c.result.peak_bytes,
                       "step_s": c.result.step_s} for c in self.front],
            "chosen": self.chosen.row(base) if self.chosen else None,
        }


def pareto_front(rows: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """The rows no other row beats on both predicted peak and step time, by peak."""
    front: list[Candidate] = []
    for c in sorted(rows, key=lambda c: (c.result.peak_bytes, c.result.step_s)):
        if not front or c.result.step_s < front[-1].result.step_s:
            front.append(c)
    return tuple(front)


def _children(trace: StepTrace, parent: str) -> list[str]:
    """Children of module ``parent`` ("" for the root) that enclose a saved tensor, in
    the order of their first saved tensor (forward order)."""
    depth = parent.count(".") + 1 if parent else 0
    out: list[str] = []
    for s in trace.saved:
        parts = s.scope.split(".") if s.scope else []
        if len(parts) <= depth or (parent and ".".join(parts[:depth]) != parent):
            continue
        name = ".".join(parts[:depth + 1])
        if name not in out:
            out.append(name)
    return out


def module_groups(trace: StepTrace, max_children: int = 8,
                  max_depth: int = 3) -> list[tuple[str, tuple[str, ...]]]:
    """(label, module names) groups from the model's own tree, outermost first.

    Each top-level child is a group when there are at most ``max_children``; then,
    depth first, the first and second halves (in forward order) of every module's
    children, down to ``max_depth`` halvings. A module with one child is looked
    through (a model that wraps everything in ``self.net`` is split inside it).
    """
    groups: list[tuple[str, tuple[str, ...]]] = []

    def add(names: list[str]) -> None:
        label = names[0] if len(names) == 1 else f"{names[0]}..{names[-1].split('.')[-1]}"
        if names and all(tuple(names) != g for _, g in groups):
            groups.append((label, tuple(names)))

    def halves(names: list[str], depth: int) -> None:
        while len(names) == 1:
            inner = _children(trace, names[0])
            if not inner:
                return
            names = inner
        if depth > max_depth:
            return
        mid = len(names) // 2
        for half in (names[:mid], names[mid:]):
            add(half)
            halves(half, depth + 1)

    top = _children(trace, "")
    if 1 < len(top) <= max_children:
        for name in top:
            add([name])
    halves(top, 1)
    return groups


def candidates(trace: StepTrace) -> list[MemoryPlan]:
    """Every generic candidate plan for ``trace``, keep-all first."""
    n_uniq = len(trace.unique_saved())

    def plan(name: str, swap: SwapPolicy | None = None,
             recompute: RecomputePolicy | None = None) -> MemoryPlan:
        return MemoryPlan(swap, recompute, name)

    c = [plan("keep-all")]
    for pf in (1, 2, 4, 8, 20):
        c.append(plan(f"swap-all-pf{pf}", SwapPolicy(prefetch=pf)))
    for pf in (4, 8):  # a slow tier's writes may run further ahead of forward (only the
        for bound in (2**30, 2 * 2**30):  # disk tier bounds them; elsewhere these dedupe)
            c.append(plan(f"swap-all-pf{pf}-inflight{bound >> 20}MiB",
                          SwapPolicy(prefetch=pf, max_inflight_bytes=bound)))
    for frac in (0.25, 0.5, 0.75):
        n = max(1, round(frac * n_uniq))
        c.append(plan(f"first-{n}-pf8", SwapPolicy(n_tensors=n, prefetch=8)))
    groups = module_groups(trace)
    for label, names in groups:
        for pf in (4, 20):
            c.append(plan(f"exclude-{label}-pf{pf}", SwapPolicy(exclude=names, prefetch=pf)))
            c.append(plan(f"only-{label}-pf{pf}", SwapPolicy(include=names, prefetch=pf)))
    for mode in ("full", "speed"):
        c.append(plan(f"recompute-{mode}-all", None, RecomputePolicy(("*",), mode)))
        for label, names in groups:
            c.append(plan(f"recompute-{mode}-{label}", None, RecomputePolicy(names, mode)))
    for label, names in groups:  # hybrids: recompute one part, swap the rest
        for mode in ("full", "speed"):
            for pf in (4, 20):
                c.append(plan(f"hybrid-recompute-{mode}-{label}-swap-rest-pf{pf}",
                              SwapPolicy(prefetch=pf), RecomputePolicy(names, mode)))
    c.append(plan("hybrid-recompute-speed-all-swap-rest-pf8", SwapPolicy(prefetch=8),
                  RecomputePolicy(("*",), "speed")))
    return c


def search(trace: StepTrace, device: DeviceProfile, budget_bytes: int,
           margin: float = DEFAULT_MARGIN, extra: Sequence[MemoryPlan] = (),
           require_fit: bool = True, per_storage: bool = True,
           tier: str = "auto") -> SearchResult:
    """Simulate every candidate (the generic ones, the per-storage ones when keeping
    everything does not fit, then ``extra``); choose the fastest that fits
    ``budget*(1-margin)`` on every step. Ties (predicted times within 0.1%) go to the
    plan that moves fewer bytes, then to the lower peak. Candidates that leave their
    tier to ``auto`` swap to ``tier`` when the caller names one; every plan is then made
    concrete for the profile's device.

    Raises InputError when none fits (and ``require_fit``), saying how far the budget is
    from the lowest reachable peak and what that peak consists of.
    """
    if budget_bytes <= 0:
        raise InputError(f"memory budget must be positive, got {budget_bytes} bytes")
    if not 0 <= margin < 1:
        raise InputError(f"safety margin must be in [0, 1), got {margin}")
    usable = budget_bytes * (1 - margin)
    kind = device_type(device)
    rows: list[Candidate] = []
    seen = set()

    def evaluate(plans: Sequence[MemoryPlan], always: bool = False) -> None:
        for p in plans:
            if tier != "auto" and p.swap is not None and p.swap.tier == "auto":
                p = p.replace(swap=p.swap.replace(tier=tier))
            p = p.concrete(kind)
            r = simulate(trace, device, p.swap, p.recompute)
            sig = (r.swapped_tensors, r.swapped_bytes, r.recomputed_tensors, r.peak_bytes,
                   r.step_s)
            if sig in seen and not always:  # the caller's candidates are always listed
                continue  # same plan in effect as an earlier candidate
            seen.add(sig)
            rows.append(Candidate(p, r, r.peak_bytes <= usable))

    evaluate(candidates(trace))
    if per_storage and not rows[0].fits:
        evaluate(storage_plans(trace, device, int(usable), rows[0].result))
    evaluate(list(extra), always=True)
    fitting = [c for c in rows if c.fits]
    chosen = None
    if fitting:
        base = rows[0].result.step_s
        chosen = min(fitting, key=lambda c: rank(c.result, base))
    elif require_fit:
        raise InputError(floor_message(trace, rows, budget_bytes, margin))
    return SearchResult(trace.summary(), device, budget_bytes, margin, tuple(rows), chosen)


def rank(r: SimResult, base_step_s: float) -> tuple[float, int, int, int]:
    """The search's order among plans that fit: predicted times within 0.1% are a tie,
    broken by fewer bytes moved (every byte moved costs something the model may miss),
    then fewer tensors recomputed (a profile may count cheap ops as free), then the lower
    peak."""
    return (round(r.step_s / base_step_s, 3), r.swapped_bytes, r.recomputed_tensors,
            r.peak_bytes)


def floor_message(trace: StepTrace, rows: Sequence[Candidate], budget_bytes: int,
                  margin: float) -> str:
    """Why no plan fits, in one line: the lowest reachable peak, what it consists of at
    its peak op, and how many bytes are missing."""
    usable = budget_bytes * (1 - margin)
    best = min(rows, key=lambda c: c.result.peak_bytes)
    r = best.result
    mem = r.timeline.get("memory_bytes") or [r.peak_bytes]
    at = max(range(len(mem)), key=mem.__getitem__)
    saved = int(r.timeline["saved_bytes"][at]) if r.timeline.get("saved_bytes") else 0
    grads = min(trace.grad_bytes, max(0, r.peak_bytes - trace.persistent_bytes - saved))
    work = max(0, r.peak_bytes - trace.persistent_bytes - saved - grads)
    op = trace.ops[at].name if at < len(trace.ops) else "?"
    missing = r.peak_bytes - usable
    return (f"no plan fits {_size(budget_bytes)} (usable {_size(usable)} after a "
            f"{margin:.0%} margin) at input {'x'.join(map(str, trace.input_shape))}: the "
            f"lowest reachable peak is {_size(r.peak_bytes)} ({best.name}) = weights "
            f"{_size(trace.param_bytes)} + optimizer state {_size(trace.optimizer_bytes)} + "
            f"gradients {_size(grads)} + saved activations left {_size(saved)} + the "
            f"working set at its peak op ({op}) {_size(work)}; {_size(missing)} "
            f"({int(missing)} bytes) missing")


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.2f} MiB"
