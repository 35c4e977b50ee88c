"""swapseg.offload: move the activations autograd saves off the device and back.

    with OffloadEngine(model, plan) as engine:        # one engine for the run
        for x, y in loader:
            with engine.step():
                loss_fn(model(x), y).backward()
    print(engine.stats.as_dict(), engine.stats.last_step.prefetch_misses)

    with swap_activations(model, SwapPolicy(exclude="decoder.*", prefetch=20)) as stats:
        loss_fn(model(x), y).backward()               # one step: an engine for the context

    with apply_plan(model, MemoryPlan(swap=SwapPolicy(), recompute=RecomputePolicy())):
        ...

The mechanism only: imports torch, itself and ``swapseg.errors``; the planner
(``swapseg.planner``) chooses plans on top of it.
"""

from swapseg.offload.apply import apply_plan, swap_activations
from swapseg.offload.engine import SwapEngine
from swapseg.offload.policy import (
    TIERS,
    MemoryPlan,
    RecomputePolicy,
    SwapPolicy,
    as_plan,
    concrete_tier,
    scope_matches,
)
from swapseg.offload.recompute import recompute
from swapseg.offload.run import OffloadEngine
from swapseg.offload.stats import ScopeStats, SwapStats
from swapseg.offload.timeline import plot_timeline
from swapseg.offload.transport import BufferPool, clear_pools, get_pool

__all__ = ["OffloadEngine", "swap_activations", "SwapEngine", "as_plan", "concrete_tier",
           "SwapPolicy", "RecomputePolicy", "MemoryPlan",
           "apply_plan", "recompute", "scope_matches", "TIERS", "SwapStats", "ScopeStats",
           "BufferPool", "get_pool", "clear_pools", "plot_timeline"]

