"""One-step sugar over ``OffloadEngine``: an engine that lives as long as one context.

    with swap_activations(model, SwapPolicy(exclude="decoder.*", prefetch=20)) as stats:
        loss_fn(model(x), y).backward()

    with apply_plan(model, plan) as stats:
        loss_fn(model(x), y).backward()

Each context builds an engine and closes it, so the unpack order it learns is lost at
exit: a loop of several steps should hold one ``OffloadEngine`` and enter ``step()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.offload.run import OffloadEngine
from swapseg.offload.stats import SwapStats
from swapseg.offload.transport import TransportFactory

__all__ = ["apply_plan", "swap_activations"]


@contextlib.contextmanager
def swap_activations(model: nn.Module, policy: SwapPolicy | None, *, trace: bool = False,
                     workers: int | None = None, max_inflight_bytes: int | None = -1,
                     transport: TransportFactory | None = None) -> Iterator[SwapStats]:
    """Swap the tensors autograd saves inside this context, as ``policy`` says.

    Yields a live ``SwapStats``. ``policy=None`` installs nothing and yields empty stats.
    ``workers`` is the thread count of the host and disk tiers (0: copies run inline,
    which makes the resident-byte accounting deterministic). ``None`` (default): inline
    for CPU tensors on the host tier, where a copy thread would only compete with compute
    for the same cores, and one thread otherwise. ``max_inflight_bytes``
    makes a pack wait while more copy-out bytes are in flight (None: never; the default
    -1 means the policy's ``max_inflight_bytes``, see ``engine.inflight_bound``).
    ``transport``: ``factory(device) -> Transport`` replaces the tier's transports (see
    ``swapseg.offload.transport.Transport``).
    """
    if policy is not None and not isinstance(policy, SwapPolicy):
        raise InputError(f"swap_activations needs a SwapPolicy or None, got "
                         f"{type(policy).__name__} {policy!r:.60}")
    with OffloadEngine(model, policy, trace=trace, workers=workers, transport=transport,
                       max_inflight_bytes=max_inflight_bytes) as engine, \
            engine.step() as stats:
        yield stats


@contextlib.contextmanager
def apply_plan(model: nn.Module, plan: MemoryPlan | SwapPolicy | None, *,
               trace: bool = False) -> Iterator[SwapStats]:
    """Swap and recompute as ``plan`` says while the context is open; yields the swap
    engine's live :class:`SwapStats` (empty when the plan swaps nothing). A ``SwapPolicy``
    is the plan that only swaps; ``None`` is the empty plan: nothing is installed."""
    with OffloadEngine(model, plan, trace=trace) as engine, engine.step() as stats:
        yield stats
