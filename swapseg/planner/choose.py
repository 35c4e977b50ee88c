"""``choose_plan``: the fastest predicted memory plan of any model under a budget."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan
from swapseg.planner.local import calibration_shape, get_profile
from swapseg.planner.loss import Target, bind_target
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.search import DEFAULT_MARGIN, Candidate, search
from swapseg.planner.trace import LossFn, trace_step

__all__ = ["choose_plan", "resolve_profile"]


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


def choose_plan(model: nn.Module, input_shape: Sequence[int],
                device: str | DeviceProfile = "local", budget_bytes: int = 0,
                loss_fn: LossFn | None = None, autocast_dtype: torch.dtype | None = None,
                margin: float | None = None, tier: str = "auto",
                extra: list[Candidate] | None = None,
                target: Target | None = None) -> MemoryPlan:
    """The fastest predicted plan whose peak fits ``budget_bytes`` minus a safety margin.

    Args:
        model: any ``nn.Module``; it is traced under fake tensors, not modified.
        input_shape: ``(B, C, *spatial)`` of one training input.
        device: a profile name (``p100-nvlink``, ..., ``local``) or a profile; ``local``
            measures this machine (the CPU, or the GPU when ``tier="cuda"``).
        budget_bytes: device memory the step must fit in.
        loss_fn: ``loss_fn(output) -> scalar``; default: mean of squared outputs.
        autocast_dtype: trace (and calibrate) under ``torch.autocast`` at this dtype.
        margin: fraction of the budget kept free (default ``DEFAULT_MARGIN``).
        tier: the copy path the ``local`` profile measures (``host``, ``cuda``, ``disk``;
            ``auto``: the CPU with its disk tier, the only one that frees CPU memory, so
            a CPU plan swaps to disk or recomputes, never to host memory).
        extra: the caller's own candidates, searched with the generic ones.
        target: a description of the loss's target (``(shape, dtype)`` or a function of
            the output): ``loss_fn(output, target)`` then; see ``planner.loss``.

    Raises InputError saying how many bytes are missing when no candidate fits.
    """
    if budget_bytes <= 0:
        raise InputError(f"memory budget must be positive, got {budget_bytes} bytes")
    shape = tuple(input_shape)
    loss_fn = bind_target(loss_fn, target)
    dev = resolve_profile(device, model, shape, tier, loss_fn, autocast_dtype)
    trace = trace_step(model, shape, loss_fn, autocast_dtype=autocast_dtype)
    res = search(trace, dev, budget_bytes, DEFAULT_MARGIN if margin is None else margin,
                 extra=extra)
    c = res.chosen
    assert c is not None  # search raised otherwise
    return MemoryPlan(swap=c.swap, recompute=c.recompute, name=c.name)
