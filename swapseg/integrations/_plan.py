"""The one door from the integrations to swapseg's plans, planner and size grammar.

Every integration imports ``MemoryPlan``, ``apply_plan``, ``choose_plan``, ``SwapPolicy``,
``SwapStats`` and ``parse_size`` from here, so a rename in the mechanism or the planner is
one edit in this file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from swapseg.offload import MemoryPlan, ScopeStats, SwapPolicy, SwapStats, apply_plan, as_plan
from swapseg.offload.sizes import parse_bytes
from swapseg.planner import PlanEvidence, choose_plan, plan_memory
from swapseg.planner.loss import Target, like_output

__all__ = ["MemoryPlan", "apply_plan", "choose_plan", "plan_memory", "PlanEvidence", "Target",
           "like_output",
           "SwapPolicy", "SwapStats", "ScopeStats", "as_plan", "parse_size", "plan_search"]

LossFn = Callable[[Any], torch.Tensor]


def plan_search(model: nn.Module, input_shape: Sequence[int], device: str = "local", *,
                budget_bytes: int | str, loss_fn: LossFn | None = None,
                target: Target | None = None, autocast_dtype: torch.dtype | None = None,
                tier: str = "host", require_fit: bool = True) -> PlanEvidence:
    """The planner's whole search for one step of ``model`` (``plan_memory``): the plan,
    its prediction and keep-all's, every evaluated row and the profile.

    ``loss_fn`` is the training loss: ``loss_fn(output)``, or with ``target``
    ``loss_fn(output, target)``, where ``target`` describes the target rather than
    giving it: ``(shape, dtype)`` at ``input_shape`` (e.g. ``((B, 1, *patch),
    torch.int64)`` for MONAI's ``DiceCELoss(to_onehot_y=True)``), ``like_output()``, or
    a function of the output (``swapseg.planner.loss``). The planner builds it as
    zeros; losses with data-dependent Python (MONAI's Dice family) are measured once on
    real tensors and stood in for."""
    return plan_memory(model, tuple(int(s) for s in input_shape), device,
                       budget_bytes=budget_bytes, loss_fn=loss_fn, target=target,
                       autocast_dtype=autocast_dtype, tier=tier, require_fit=require_fit)


def parse_size(text: str, what: str = "memory size") -> int:
    """'12GiB', '500MB', '1e9B' -> bytes (the one size grammar; a bare number is an error)."""
    return parse_bytes(text, what)
