"""``plan_memory``: the fastest predicted memory plan of any model under a budget, with its
evidence; ``choose_plan`` is its ``.plan``.

One call traces the step once and returns everything the search saw (the plan, its
prediction and keep-all's, every row, the profile), so callers that report or record a
plan do not trace or simulate again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan
from swapseg.offload.sizes import parse_bytes
from swapseg.planner.local import calibration_shape, get_profile
from swapseg.planner.loss import Target, bind_target
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.search import DEFAULT_MARGIN, Candidate, SearchResult, search
from swapseg.planner.simulate import SimResult
from swapseg.planner.trace import LossFn, StepTrace, trace_step

#: Extra candidate plans: a list, or a function of the step's trace that makes them.
Extra = Sequence[MemoryPlan] | Callable[[StepTrace], Sequence[MemoryPlan]]

__all__ = ["PlanEvidence", "plan_memory", "choose_plan", "resolve_profile", "model_class",
           "trace_model"]


@dataclass(frozen=True)
class PlanEvidence:
    """What one planning found: the plan and why."""

    plan: MemoryPlan
    """The chosen plan, concrete for the profile's device, ``model_class`` filled (the
    lowest-peak plan when nothing fits and the caller did not require a fit)."""
    fits: bool
    """Whether ``plan``'s predicted peak fits the usable budget on every step."""
    predicted: SimResult
    """``plan``'s predicted step."""
    keep_all: SimResult
    """The predicted step with nothing swapped or recomputed."""
    search: SearchResult
    """Every evaluated plan (immutable rows, keep-all first), the chosen one, the front."""
    profile: DeviceProfile
    """The device profile the plans were simulated on."""

    @property
    def rows(self) -> tuple[Candidate, ...]:
        return self.search.candidates


def model_class(model: nn.Module) -> str:
    """``module:QualName`` of ``model``'s class (what ``MemoryPlan.model_class`` holds)."""
    return f"{type(model).__module__}:{type(model).__qualname__}"


def resolve_profile(device: str | DeviceProfile, model: nn.Module,
                    input_shape: Sequence[int], tier: str = "auto",
                    loss_fn: LossFn | None = None,
                    autocast_dtype: torch.dtype | None = None) -> DeviceProfile:
    """A profile object from a name; ``local`` measures this machine, on a CPU with one
    real step of ``model`` at a small shape like ``input_shape`` (see
    ``calibration_shape``), the GPU's probes when ``tier="cuda"``."""
    if isinstance(device, DeviceProfile):
        return device
    calib = calibration_shape(tuple(input_shape)) \
        if device == "local" and tier != "cuda" else None
    return get_profile(device, model, tier, calibrate_shape=calib, loss_fn=loss_fn,
                       autocast_dtype=autocast_dtype, fallback_shape=tuple(input_shape)) \
        if device == "local" \
        else get_profile(device)


def _check_batch_axis(model: nn.Module, shape: tuple[int, ...]) -> None:
    """A shape one axis short of what the model's first convolution takes is a shape
    without its batch axis (the CLI's ``--shape`` has none, so users copy it)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is None:
        return
    want = len(conv.kernel_size) + 2
    if len(shape) == want - 1:
        raise InputError(f"input shape {tuple(shape)} has {len(shape)} axes but "
                         f"{type(conv).__name__} takes {want} (B, C, *spatial): add the "
                         f"batch axis, e.g. {(1, *shape)}")


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """FakeTensorMode logs a traceback for an op that fails; the caller gets one line."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def trace_model(model: nn.Module, shape: tuple[int, ...], loss_fn: LossFn | None = None,
                autocast_dtype: torch.dtype | None = None,
                name: str | None = None) -> StepTrace:
    """``trace_step``, with a shape the model cannot take as a one-line InputError."""
    if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
        raise InputError(f"input shape must be positive integers (B, C, *spatial), got {shape}")
    _check_batch_axis(model, shape)
    try:
        with _quiet_fake_tensor_log():
            return trace_step(model, shape, loss_fn, name=name, autocast_dtype=autocast_dtype)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name or type(model).__name__} cannot run a step at input "
                         f"{'x'.join(map(str, shape))}: {first}") from None


def plan_memory(model: nn.Module, input_shape: Sequence[int],
                device: str | DeviceProfile = "local", *, budget_bytes: int | str,
                loss_fn: LossFn | None = None, target: Target | None = None,
                autocast_dtype: torch.dtype | None = None, margin: float | None = None,
                tier: str = "auto", extra: Extra = (), require_fit: bool = True,
                name: str | None = None) -> PlanEvidence:
    """The fastest predicted plan whose peak fits ``budget_bytes`` minus a safety margin
    on every step, with the evidence; the model is traced once.

    Args:
        model: any ``nn.Module``; it is traced under fake tensors, not modified.
        input_shape: ``(B, C, *spatial)`` of one training input, batch axis included.
        budget_bytes: device memory the step must fit in: bytes or a size (``"6GiB"``).
        device: a profile name (``p100-nvlink``, ..., ``local``) or a profile; ``local``
            measures this machine (the CPU, or the GPU when ``tier="cuda"``).
        loss_fn: ``loss_fn(output) -> scalar``; default: mean of squared outputs.
        autocast_dtype: trace (and calibrate) under ``torch.autocast`` at this dtype.
        margin: fraction of the budget kept free (default ``DEFAULT_MARGIN``).
        target: a description of the loss's target (``(shape, dtype)`` or a function of
            the output): ``loss_fn(output, target)`` then; see ``planner.loss``.
        tier: where the plans swap to, and the copy path the ``local`` profile measures
            (``host``, ``cuda``, ``disk``, ``auto``). Plans are made concrete for the
            profile's device (``MemoryPlan.concrete``): ``auto`` swaps to disk on a CPU,
            to pinned host memory on a GPU; a named tier is kept.
        extra: the caller's own candidate plans, searched with the generic ones, or a
            function of the step's trace that returns them (traced once for both).
        require_fit: when False and nothing fits, the lowest-peak plan is returned with
            ``fits=False`` instead of an InputError.
        name: the model's name in the trace and in errors.

    Raises InputError for a bad budget or shape, and, when no plan fits, with the lowest
    reachable peak and what it consists of.
    """
    budget = parse_bytes(budget_bytes, "budget_bytes") \
        if isinstance(budget_bytes, str) else budget_bytes
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise InputError(f"memory budget must be a positive number of bytes or a size "
                         f"like '6GiB', got {budget_bytes!r}")
    shape = tuple(input_shape)
    loss_fn = bind_target(loss_fn, target)
    trace = trace_model(model, shape, loss_fn, autocast_dtype, name)
    dev = resolve_profile(device, model, shape, tier, loss_fn, autocast_dtype)
    res = search(trace, dev, budget, DEFAULT_MARGIN if margin is None else margin,
                 extra=extra(trace) if callable(extra) else extra, require_fit=require_fit,
                 tier=tier)
    row = res.chosen or min(res.candidates, key=lambda c: c.result.peak_bytes)
    plan = row.plan.replace(model_class=model_class(model))
    return PlanEvidence(plan, res.chosen is not None, row.result, res.candidates[0].result,
                        res, dev)


def choose_plan(model: nn.Module, input_shape: Sequence[int],
                device: str | DeviceProfile = "local", *, budget_bytes: int | str,
                loss_fn: LossFn | None = None, target: Target | None = None,
                autocast_dtype: torch.dtype | None = None, margin: float | None = None,
                tier: str = "auto", extra: Extra = ()) -> MemoryPlan:
    """The plan of :func:`plan_memory` (same arguments), without its evidence."""
    return plan_memory(model, input_shape, budget_bytes=budget_bytes, device=device,
                       loss_fn=loss_fn, target=target, autocast_dtype=autocast_dtype,
                       margin=margin, tier=tier, extra=extra).plan
