"""OffloadEngine: a memory plan that lives for a training run and is entered per step.

    with OffloadEngine(model, plan) as engine:
        for x, y in loader:
            with engine.step():
                loss_fn(model(x), y).backward()
            optimizer.step()
            print(engine.stats.last_step.prefetch_misses)

Everything that may outlive one step is built once: the module hooks and scope tracker,
the recompute wrappers, the transports and their buffer pools, the prefetch schedule
(the unpack order learned in one step is the prefetch order of the next) and one
``SwapStats``. Entering a step installs only autograd's ``saved_tensors_hooks``; leaving
it records the step's own figures in ``stats.last_step``. Building the hooks once also
keeps ``torch.compile``'s guards valid across steps (new hooks would recompile the model).

A step that raises releases every entry it made (no host buffer or file remains) and
leaves the engine ready for the next step. A graph that outlives its step (backward run
after the step closed) still unpacks: its copies run inline once the engine is closed.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.offload.engine import SwapEngine
from swapseg.offload.policy import MemoryPlan, SwapPolicy, as_plan, scope_matches
from swapseg.offload.recompute import unwrap_scopes, wrap_scopes
from swapseg.offload.stats import SwapStats
from swapseg.offload.transport import TransportFactory

__all__ = ["OffloadEngine", "check_globs"]


def check_globs(model: nn.Module, policy: SwapPolicy) -> None:
    """Every include/exclude glob of ``policy`` matches a module of ``model``, or InputError
    naming the glob and the nearest module names (a glob matching nothing does nothing)."""
    names = [n for n, _ in model.named_modules()]
    for what, globs in (("include", policy.include), ("exclude", policy.exclude)):
        for g in globs:
            if any(scope_matches(n, (g,)) for n in names):
                continue
            near = difflib.get_close_matches(g.rstrip(".*"), [n for n in names if n], n=5,
                                             cutoff=0.3)
            raise InputError(f"{what} glob {g!r} matches no module of {type(model).__name__}"
                             f" (nearest: {', '.join(near) or ', '.join(names[1:6]) or '-'})")


class OffloadEngine:
    """One run's swap engine and recompute wrappers; see the module docstring.

    ``plan``: a ``MemoryPlan``, a ``SwapPolicy`` (a plan that only swaps) or None (off:
    every step is a null context and ``stats`` stays empty). ``trace``: record timestamped
    events in ``stats.events`` (settable between steps). ``workers``, ``transport`` and
    ``max_inflight_bytes``: as in ``swapseg.offload.swap_activations``.
    """

    def __init__(self, model: nn.Module, plan: MemoryPlan | SwapPolicy | None, *,
                 trace: bool = False, workers: int | None = None,
                 transport: TransportFactory | None = None,
                 max_inflight_bytes: int | None = -1) -> None:
        self.plan = as_plan(plan)
        if not isinstance(model, nn.Module):
            raise InputError(f"OffloadEngine needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self._swap: SwapEngine | None = None
        self._wrapped: list[tuple[str, nn.Module]] = []
        self._stats = SwapStats()
        self._hooks: Any = None
        self._before: SwapStats | None = None
        self.closed = False
        swap = self.plan.swap
        if swap is not None:
            check_globs(model, swap)
        if self.plan.recompute is not None:
            self._wrapped = wrap_scopes(model, self.plan.recompute)
        if swap is not None:
            try:
                self._swap = SwapEngine(model, swap, trace=trace, workers=workers,
                                        max_inflight_bytes=max_inflight_bytes,
                                        transport=transport)
            except BaseException:
                unwrap_scopes(self._wrapped)
                raise
            self._stats = self._swap.stats

    @property
    def stats(self) -> SwapStats:
        """The run's totals; ``stats.last_step`` is the last finished step's own figures."""
        return self._stats

    @property
    def policy(self) -> SwapPolicy | None:
        """The swap policy that runs, its tier made concrete for the model's device."""
        return None if self._swap is None else self._swap.policy

    @property
    def in_step(self) -> bool:
        """A step is open (between ``begin_step`` and ``end_step``)."""
        return self._before is not None

    @property
    def recomputed(self) -> list[str]:
        """Qualified names of the checkpointed modules."""
        return [n for n, _ in self._wrapped]

    @property
    def trace(self) -> bool:
        return self._swap is not None and self._swap.log.trace

    @trace.setter
    def trace(self, on: bool) -> None:
        if self._swap is not None:
            self._swap.log.trace = on

    # ------------------------------------------------------------------ steps
    def begin_step(self) -> SwapStats:
        """Start a step (for frameworks that call back at a step's start and end; else
        use ``step()``). Returns the live run totals."""
        if self.closed:
            raise InputError("this OffloadEngine is closed; make a new one for another run")
        if self._before is not None:
            raise InputError("a step of this OffloadEngine is already open")
        self._before = self._stats.begin_step()
        if self._swap is not None:
            self._swap.begin_step()
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._swap.pack,
                                                                   self._swap.unpack)
            self._hooks.__enter__()
        return self._stats

    def end_step(self, error: BaseException | None = None) -> None:
        """End the open step (idempotent). After ``error`` the step's entries are released
        and the step is not counted (``stats.steps`` and ``last_step`` are of finished
        steps)."""
        before, self._before = self._before, None
        if before is None:
            return
        hooks, self._hooks = self._hooks, None
        try:
            if hooks is not None:
                hooks.__exit__(None, None, None)
            if self._swap is not None:
                self._swap.end_step(error=error is not None)
        except BaseException:
            error = error or RuntimeError("the step's copies failed")
            raise
        finally:
            if error is None:
                self._stats.end_step(before)

    @contextlib.contextmanager
    def step(self) -> Iterator[SwapStats]:
        """``with engine.step(): forward, loss, backward``; yields the run's live totals."""
        stats = self.begin_step()
        try:
            yield stats
        except BaseException as exc:
            self.end_step(exc)
            raise
        self.end_step()

    # ------------------------------------------------------------------ lifetime
    def close(self, error: bool = False) -> None:
        """End the run: remove hooks and wrappers, close the transports (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.end_step(RuntimeError("engine closed") if error else None)
        finally:
            unwrap_scopes(self._wrapped)
            self._wrapped = []
            if self._swap is not None:
                self._swap.close(error=error)

    def __enter__(self) -> OffloadEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(error=exc is not None)
