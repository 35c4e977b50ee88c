"""Swapping for training loops that someone else owns.

A framework (nnU-Net, MONAI/ignite, Lightning) calls us at the start and the end of each
training step. ``StepSwapper`` opens the plan's swap and recompute context at the start
and closes it at the end, so everything autograd saves in that step's forward and backward
goes through the engine, and nothing outside a step does. Its ``stats`` is one SwapStats
that adds up the steps: live after each step, and ``current`` is the running step's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from torch import nn

from swapseg.integrations._plan import MemoryPlan, ScopeStats, SwapStats, apply_plan

__all__ = ["StepSwapper", "add_stats"]

#: SwapStats fields that are not running totals.
_MAX_FIELDS = {"peak_device_bytes"}
_LAST_FIELDS = {"device_bytes"}
_SKIP_FIELDS = {"t0", "events", "by_scope"}


def add_stats(total: SwapStats, step: SwapStats) -> None:
    """Add one context's counters into ``total`` (peaks: the maximum; residents: the last)."""
    for f in dataclasses.fields(SwapStats):
        if f.name in _SKIP_FIELDS:
            continue
        value = getattr(step, f.name)
        if f.name in _MAX_FIELDS:
            setattr(total, f.name, max(getattr(total, f.name), value))
        elif f.name in _LAST_FIELDS:
            setattr(total, f.name, value)
        else:
            setattr(total, f.name, getattr(total, f.name) + value)
    for scope, sc in step.by_scope.items():
        acc = total.scope(scope)
        for f in dataclasses.fields(ScopeStats):
            setattr(acc, f.name, getattr(acc, f.name) + getattr(sc, f.name))


class StepSwapper:
    """Opens ``plan`` around each training step of ``model``; see the module docstring."""

    def __init__(self, plan: MemoryPlan) -> None:
        self.plan = plan
        self.stats = SwapStats()
        """All finished steps, added up."""
        self.current: SwapStats | None = None
        """The running step's live counters (None between steps)."""
        self._stack: contextlib.ExitStack | None = None

    def begin(self, model: nn.Module) -> None:
        if self._stack is not None:  # the framework skipped the previous step's end
            self.end()
        stack = contextlib.ExitStack()
        self.current = stack.enter_context(apply_plan(model, self.plan))
        self._stack = stack

    def end(self, error: BaseException | None = None) -> None:
        """Close the step's context (idempotent); after ``error`` the engine drops its copies."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if error is None:
            stack.close()
        else:
            stack.__exit__(type(error), error, error.__traceback__)
        if self.current is not None:
            add_stats(self.stats, self.current)
        self.current = None

    @contextlib.contextmanager
    def step(self, model: nn.Module) -> Iterator[SwapStats]:
        """``with swapper.step(model): forward, loss, backward`` for loops we can wrap."""
        self.begin(model)
        try:
            assert self.current is not None
            yield self.current
        except BaseException as exc:
            self.end(exc)
            raise
        self.end()

    def summary(self) -> dict[str, Any]:
        """The plan and the totals, JSON-able (for logs)."""
        s = self.stats
        return {"plan": self.plan.to_dict(), "steps": s.steps, "packed": s.packed,
                "swapped": s.swapped, "bytes_out": s.bytes_out, "bytes_in": s.bytes_in,
                "kept": s.kept, "peak_device_bytes": s.peak_device_bytes}
