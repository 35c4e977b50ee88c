"""swapseg.offload: move the activations autograd saves off the device and back.

    with swap_activations(model, SwapPolicy(exclude=("decoder.*",), prefetch=20)) as stats:
        loss_fn(model(x), y).backward()
    print(stats.as_dict())
"""

from swapseg.offload.engine import SwapEngine, swap_activations
from swapseg.offload.policy import TIERS, SwapPolicy
from swapseg.offload.stats import ScopeStats, SwapStats
from swapseg.offload.transport import BufferPool, clear_pools, get_pool

__all__ = ["swap_activations", "SwapEngine", "SwapPolicy", "TIERS", "SwapStats", "ScopeStats",
           "BufferPool", "get_pool", "clear_pools", "plot_timeline"]


def plot_timeline(events, path):  # noqa: ANN001 - thin lazy import (matplotlib is heavy)
    """Plot a traced step (``stats.events``) as compute/copy lanes; see ``timeline``."""
    from swapseg.offload.timeline import plot_timeline as _plot
    return _plot(events, path)
