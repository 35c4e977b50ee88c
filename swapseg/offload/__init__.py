"""swapseg.offload: move the activations autograd saves off the device and back.

    with swap_activations(model, SwapPolicy(exclude=("decoder.*",), prefetch=20)) as stats:
        loss_fn(model(x), y).backward()
    print(stats.as_dict())

    with apply_plan(model, MemoryPlan(swap=SwapPolicy(), recompute=RecomputePolicy())):
        ...

The mechanism only: imports torch, itself and ``swapseg.errors``; the planner
(``swapseg.planner``) chooses plans on top of it.
"""

from swapseg.offload.apply import apply_plan
from swapseg.offload.engine import SwapEngine, swap_activations
from swapseg.offload.policy import TIERS, MemoryPlan, RecomputePolicy, SwapPolicy, scope_matches
from swapseg.offload.recompute import recompute
from swapseg.offload.stats import ScopeStats, SwapStats
from swapseg.offload.transport import BufferPool, clear_pools, get_pool

__all__ = ["swap_activations", "SwapEngine", "SwapPolicy", "RecomputePolicy", "MemoryPlan",
           "apply_plan", "recompute", "scope_matches", "TIERS", "SwapStats", "ScopeStats",
           "BufferPool", "get_pool", "clear_pools", "plot_timeline"]


def plot_timeline(events, path, step=None, title=None):  # lazy import
    """Plot one traced step of ``stats.events`` to ``path`` (PNG); see ``timeline``.

    ``step`` selects events by their ``step`` field (1-based count of forwards in the
    context); default: the last step whose backward ended.
    """
    from swapseg.offload.timeline import plot_timeline as _plot
    return _plot(events, path, step=step, title=title)
