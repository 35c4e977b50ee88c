"""Search swap / recompute / hybrid plans; pick the fastest predicted one under a budget.

Candidates come from the traced step and the model's own module tree, so they work for
any model and assume no module name: keep all; swap all at several prefetch distances;
the first N saved tensors in forward order; module groups (each top-level child, and
depth-first halves of the tree) swapped alone or kept while the rest is swapped;
recomputation (full and speed) of each group and of everything; and hybrids that
recompute one group and swap the rest. Domain code adds its own candidates through
``search(..., extra=...)`` (the paper's configurations live in ``swapseg.experiments``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swapseg.errors import InputError
from swapseg.offload.policy import RecomputePolicy, SwapPolicy
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.simulate import SimResult, simulate
from swapseg.planner.trace import StepTrace

__all__ = ["Candidate", "SearchResult", "candidates", "module_groups", "search", "rank",
           "DEFAULT_MARGIN"]

#: Fraction of the budget kept free for what the simulator does not see (allocator
#: fragmentation, library workspaces, the CUDA context).
DEFAULT_MARGIN = 0.10


@dataclass
class Candidate:
    name: str
    swap: SwapPolicy | None
    recompute: RecomputePolicy | None
    result: SimResult | None = None
    fits: bool = False

    def row(self, baseline_s: float) -> dict[str, Any]:
        r = self.result
        assert r is not None
        return {
            "name": self.name,
            "swapped_tensors": r.swapped_tensors,
            "swapped_bytes": r.swapped_bytes,
            "recomputed_tensors": r.recomputed_tensors,
            "peak_bytes": r.peak_bytes,
            "peak_saved_bytes": r.peak_saved_bytes,
            "step_s": r.step_s,
            "stall_s": r.stall_s,
            "recompute_s": r.recompute_s,
            "overhead": r.step_s / baseline_s - 1 if baseline_s else 0.0,
            "fits": self.fits,
            "swap": self.swap.to_dict() if self.swap else None,
            "recompute": self.recompute.to_dict() if self.recompute else None,
        }


@dataclass
class SearchResult:
    trace_summary: dict[str, Any]
    device: DeviceProfile
    budget_bytes: int
    margin: float
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None

    def as_dict(self) -> dict[str, Any]:
        base = self.candidates[0].result.step_s if self.candidates else 0.0  # keep-all
        return {
            "trace": self.trace_summary,
            "device": self.device.to_dict(),
            "budget_bytes": self.budget_bytes,
            "margin": self.margin,
            "usable_bytes": int(self.budget_bytes * (1 - self.margin)),
            "candidates": [c.row(base) for c in self.candidates],
            "chosen": self.chosen.row(base) if self.chosen else None,
        }


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


def candidates(trace: StepTrace) -> list[Candidate]:
    """Every generic candidate for ``trace``, keep-all first."""
    n_uniq = len(trace.unique_saved())
    c = [Candidate("keep-all", None, None)]
    for lb in (1, 2, 4, 8, 20):
        c.append(Candidate(f"swap-all-lb{lb}", SwapPolicy(prefetch=lb), None))
    for frac in (0.25, 0.5, 0.75):
        n = max(1, round(frac * n_uniq))
        c.append(Candidate(f"first-{n}-lb8", SwapPolicy(n_tensors=n, prefetch=8), None))
    groups = module_groups(trace)
    for label, names in groups:
        for lb in (4, 20):
            c.append(Candidate(f"exclude-{label}-lb{lb}",
                               SwapPolicy(exclude=names, prefetch=lb), None))
            c.append(Candidate(f"only-{label}-lb{lb}",
                               SwapPolicy(include=names, prefetch=lb), None))
    for mode in ("full", "speed"):
        c.append(Candidate(f"recompute-{mode}-all", None, RecomputePolicy(("*",), mode)))
        for label, names in groups:
            c.append(Candidate(f"recompute-{mode}-{label}", None, RecomputePolicy(names, mode)))
    for label, names in groups:  # hybrids: recompute one part, swap the rest
        for mode in ("full", "speed"):
            for lb in (4, 20):
                c.append(Candidate(f"hybrid-recompute-{mode}-{label}-swap-rest-lb{lb}",
                                   SwapPolicy(prefetch=lb), RecomputePolicy(names, mode)))
    c.append(Candidate("hybrid-recompute-speed-all-swap-rest-lb8", SwapPolicy(prefetch=8),
                       RecomputePolicy(("*",), "speed")))
    return c


def search(trace: StepTrace, device: DeviceProfile, budget_bytes: int,
           margin: float = DEFAULT_MARGIN, extra: list[Candidate] | None = None,
           require_fit: bool = True) -> SearchResult:
    """Simulate every candidate (the generic ones, then ``extra``); choose the fastest
    that fits ``budget*(1-margin)``. Ties (predicted times within 0.1%) go to the plan
    that moves fewer bytes, then to the lower peak.

    Raises InputError when none fits (and ``require_fit``), saying how many bytes are missing.
    """
    if budget_bytes <= 0:
        raise InputError(f"memory budget must be positive, got {budget_bytes} bytes")
    if not 0 <= margin < 1:
        raise InputError(f"safety margin must be in [0, 1), got {margin}")
    usable = budget_bytes * (1 - margin)
    res = SearchResult(trace.summary(), device, budget_bytes, margin)
    seen = set()
    extra = [_on_device(c, device) for c in extra or []]
    for cand in [_on_device(c, device) for c in candidates(trace)] + extra:
        cand.result = simulate(trace, device, cand.swap, cand.recompute)
        cand.fits = cand.result.peak_bytes <= usable
        r = cand.result
        sig = (r.swapped_tensors, r.swapped_bytes, r.recomputed_tensors, r.peak_bytes, r.step_s)
        if sig in seen and cand not in extra:  # the caller's candidates are always listed
            continue  # same plan in effect as an earlier candidate
        seen.add(sig)
        res.candidates.append(cand)
    fitting = [c for c in res.candidates if c.fits]
    if fitting:
        base = res.candidates[0].result.step_s  # type: ignore[union-attr]
        res.chosen = min(fitting, key=lambda c: rank(c.result, base))  # type: ignore[arg-type]
    elif require_fit:
        best = min(res.candidates, key=lambda c: c.result.peak_bytes)  # type: ignore
        missing = best.result.peak_bytes - usable  # type: ignore
        raise InputError(
            f"no plan fits {_gib(budget_bytes)} (usable {_gib(usable)} after a "
            f"{margin:.0%} margin) at input {'x'.join(map(str, trace.input_shape))}: the "
            f"smallest predicted peak is {_gib(best.result.peak_bytes)} "  # type: ignore
            f"({best.name}), {_gib(missing)} ({int(missing)} bytes) missing")
    return res


def rank(r: SimResult, base_step_s: float) -> tuple[float, int, int, int]:
    """The search's order among plans that fit: predicted times within 0.1% are a tie,
    broken by fewer bytes moved (every byte moved costs something the model may miss),
    then fewer tensors recomputed (a profile may count cheap ops as free), then the lower
    peak."""
    return (round(r.step_s / base_step_s, 3), r.swapped_bytes, r.recomputed_tensors,
            r.peak_bytes)


def _on_device(c: Candidate, device: DeviceProfile) -> Candidate:
    """Where device memory is host memory (a CPU), only the disk tier frees any: a swap
    candidate left to ``tier="auto"`` becomes an explicit disk-tier plan, so the plan that
    runs is the one simulated."""
    if device.unified_memory and c.swap is not None and c.swap.tier == "auto":
        c.swap = c.swap.replace(tier="disk")
    return c


def _gib(n: float) -> str:
    """GiB, or MiB below one GiB (a small budget is not "0.00 GiB"); as
    ``swapseg.sizes.format_bytes``, which the planner's layer may not import."""
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.2f} MiB"
