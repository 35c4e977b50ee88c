"""``apply_plan``: run a training step under a memory plan (swap + recompute as one context).

    with apply_plan(model, plan) as stats:
        loss_fn(model(x), y).backward()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from swapseg.offload.engine import swap_activations
from swapseg.offload.policy import MemoryPlan
from swapseg.offload.recompute import recompute
from swapseg.offload.stats import SwapStats

__all__ = ["apply_plan"]


@contextlib.contextmanager
def apply_plan(model: nn.Module, plan: MemoryPlan | None) -> Iterator[SwapStats]:
    """Swap and recompute as ``plan`` says while the context is open; yields the swap
    engine's live :class:`SwapStats` (empty when the plan swaps nothing). ``None`` is the
    empty plan: nothing is installed."""
    plan = plan or MemoryPlan()
    with swap_activations(model, plan.swap) as stats, recompute(model, plan.recompute):
        yield stats
