"""The one door from the integrations to swapseg's plans and planner.

Every integration imports ``MemoryPlan``, ``apply_plan``, ``choose_plan``, ``SwapPolicy``,
``SwapStats`` and ``parse_size`` from here, so a rename in the mechanism or the planner is
one edit in this file. ``choose_plan`` has the planner's model-agnostic signature (a loss
given by the caller); until the planner takes ``loss_fn`` itself, it is assembled here
from the planner's trace and search.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from swapseg.errors import InputError
from swapseg.offload.hybrid import MemoryPlan, apply_plan
from swapseg.offload.policy import SwapPolicy
from swapseg.offload.stats import ScopeStats, SwapStats

__all__ = ["MemoryPlan", "apply_plan", "choose_plan", "SwapPolicy", "SwapStats", "ScopeStats",
           "as_plan", "parse_size", "plan_search"]

LossFn = Callable[[object], torch.Tensor]


def as_plan(policy_or_plan: SwapPolicy | MemoryPlan | None) -> MemoryPlan:
    """A SwapPolicy becomes a swap-only plan; None swaps nothing."""
    if policy_or_plan is None:
        return MemoryPlan()
    if isinstance(policy_or_plan, SwapPolicy):
        return MemoryPlan(swap=policy_or_plan, name="policy")
    if isinstance(policy_or_plan, MemoryPlan):
        return policy_or_plan
    raise InputError(f"expected a SwapPolicy or MemoryPlan, got {type(policy_or_plan).__name__}")


def plan_search(model: nn.Module, input_shape: tuple[int, ...], device: str = "local", *,
                budget_bytes: int, loss_fn: LossFn | None = None, tier: str = "host",
                require_fit: bool = True) -> Any:
    """The planner's search over its candidates for one step of ``model`` (every
    candidate's predicted peak and step time; ``.chosen`` the fastest that fits)."""
    from swapseg.offload.plan.devices import get_profile
    from swapseg.offload.plan.report import calibration_shape
    from swapseg.offload.plan.search import DEFAULT_MARGIN, search
    from swapseg.offload.plan.trace import default_loss, trace_step

    shape = tuple(int(s) for s in input_shape)
    guard = _ParameterGuard(model)
    calib = calibration_shape(shape, getattr(model, "divisor", 16)) \
        if device == "local" and tier != "cuda" else None
    try:
        # the local profile's real calibration step uses the planner's default loss, which
        # takes one tensor: it measures the model through a view of its first output
        profile = get_profile(device, _Calibrated(model, guard) if device == "local" else model,
                              tier, calibrate_shape=calib)
        trace = trace_step(model, shape, loss_fn or default_loss)
    finally:
        guard.restore()
    return search(trace, profile, budget_bytes, DEFAULT_MARGIN, require_fit=require_fit)


def choose_plan(model: nn.Module, input_shape: tuple[int, ...], device: str = "local", *,
                budget_bytes: int, loss_fn: LossFn | None = None,
                autocast_dtype: torch.dtype | None = None, tier: str = "host") -> MemoryPlan:
    """The planner's fastest predicted plan for one step of ``model`` that fits the budget.

    ``loss_fn`` maps the model's output (any pytree) to a scalar. ``autocast_dtype`` is not
    traced yet: the step is traced in the parameters' dtype, which over-counts activations
    of an autocast step, so the plan errs on the side that fits. Raises InputError with
    the missing bytes when nothing fits.
    """
    del autocast_dtype  # see the docstring: traced at full precision until the planner can
    chosen = plan_search(model, input_shape, device, budget_bytes=budget_bytes,
                         loss_fn=loss_fn, tier=tier).chosen
    assert chosen is not None  # search raises when nothing fits
    return MemoryPlan(swap=chosen.swap, recompute=chosen.recompute, name=chosen.name)


class _ParameterGuard:
    """Puts back every parameter and buffer of ``model`` as it was at construction.

    torch.func.functional_call, which the planner's trace runs, leaves its fake tensors in
    a module reachable under two names (dynamic_network_architectures' decoder holds the
    encoder): it saves each name's original after the previous name was already replaced.
    """

    def __init__(self, model: nn.Module) -> None:
        self.entries = [(m, kind, name, t) for m in model.modules()
                        for kind in ("_parameters", "_buffers")
                        for name, t in getattr(m, kind).items()]

    def restore(self) -> None:
        for module, kind, name, t in self.entries:
            getattr(module, kind)[name] = t


class _Calibrated(nn.Module):
    """``model`` for the local profile's calibration: a real (non-fake) input first puts
    back the parameters its trace left fake; the output is the first tensor (deep
    supervision: the full-resolution head)."""

    def __init__(self, model: nn.Module, guard: _ParameterGuard) -> None:
        super().__init__()
        self.model = model
        self._guard = guard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, FakeTensor):
            self._guard.restore()
        out = self.model(x)
        while isinstance(out, (list, tuple)):
            out = out[0]
        return out


# The project's size grammar is swapseg.cli's parse_bytes; the domain may not import the
# CLI, so the same grammar is read here until it moves below both (one place to point).
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, what: str = "memory size") -> int:
    """'12GiB', '500MB', '1e9' -> bytes; InputError naming ``what`` otherwise."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    try:
        if not m or unit not in _UNITS:
            raise ValueError
        value = int(float(m.group(1)) * _UNITS[unit])
    except ValueError:
        raise InputError(f"{what}: not a memory size: {text!r} (use e.g. 12GiB)") from None
    if value <= 0:
        raise InputError(f"{what}: must be positive, got {text!r}")
    return value
