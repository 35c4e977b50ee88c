"""Memory plans: swap some saved tensors, recompute others, in one training step.

``MemoryPlan`` is plain printable data (a swap policy and a recompute policy, either may
be None). ``apply_plan`` composes the two mechanisms; ``choose_plan`` asks the planner
for the fastest predicted plan under a memory budget.

Inside a recomputed scope, autograd's saved tensors go to the checkpoint's own hooks,
which shadow the swap engine's; so the engine swaps only what is saved outside those
scopes, and the planner's simulator models exactly that.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from swapseg.offload.plan.devices import DeviceProfile, get_profile
from swapseg.offload.policy import SwapPolicy
from swapseg.offload.recompute import RecomputePolicy, recompute
from swapseg.records import check_fields, json_object

__all__ = ["MemoryPlan", "apply_plan", "choose_plan"]


@dataclass(frozen=True)
class MemoryPlan:
    swap: SwapPolicy | None = None
    """What the swap engine moves off the device; None swaps nothing."""
    recompute: RecomputePolicy | None = None
    """Which scopes are checkpointed and how; None recomputes nothing."""
    name: str = ""
    """The planner's candidate name (e.g. ``paper-config-4``); informational."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name,
                "swap": self.swap.to_dict() if self.swap else None,
                "recompute": self.recompute.to_dict() if self.recompute else None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemoryPlan:
        check_fields(cls, d, "MemoryPlan")
        swap = SwapPolicy.from_dict(d["swap"]) if d.get("swap") else None
        rc = RecomputePolicy.from_dict(d["recompute"]) if d.get("recompute") else None
        return cls(swap=swap, recompute=rc, name=str(d.get("name", "")))

    @classmethod
    def from_json(cls, text: str) -> MemoryPlan:
        return cls.from_dict(json_object(text, "plan"))


@contextlib.contextmanager
def apply_plan(model: nn.Module, plan: MemoryPlan | None) -> Iterator[Any]:
    """Run forward/backward under ``plan``; yields the swap engine's live SwapStats."""
    from swapseg.offload.engine import swap_activations  # the engine helper's module

    plan = plan or MemoryPlan()
    with swap_activations(model, plan.swap) as stats, recompute(model, plan.recompute):
        yield stats


def choose_plan(model: nn.Module, input_shape: tuple[int, ...],
                device: str | DeviceProfile, budget_bytes: int,
                margin: float | None = None, tier: str = "host") -> MemoryPlan:
    """The fastest predicted plan whose peak fits ``budget_bytes`` minus a safety margin.

    ``device`` is a profile name (``p100-nvlink``, ..., ``local``) or a profile; ``local``
    measures this machine: the CPU, or the GPU when ``tier="cuda"``. Raises InputError
    saying how many bytes are missing when no candidate fits.
    """
    from swapseg.offload.plan.report import calibration_shape
    from swapseg.offload.plan.search import DEFAULT_MARGIN, search
    from swapseg.offload.plan.trace import trace_step

    shape = tuple(input_shape)
    if isinstance(device, DeviceProfile):
        dev = device
    else:  # on a CPU, calibrate the local profile with one real step at up to 64^3
        calib = calibration_shape(shape, getattr(model, "divisor", 16)) \
            if device == "local" and tier != "cuda" else None
        dev = get_profile(device, model, tier, calibrate_shape=calib)
    trace = trace_step(model, shape)
    res = search(trace, dev, budget_bytes, DEFAULT_MARGIN if margin is None else margin)
    c = res.chosen
    assert c is not None
    return MemoryPlan(swap=c.swap, recompute=c.recompute, name=c.name)
