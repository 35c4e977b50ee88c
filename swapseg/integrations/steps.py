"""Swapping for training loops that someone else owns.

A framework (nnU-Net, MONAI/ignite, Lightning) calls us at the start and the end of each
training step. ``StepSwapper`` holds one ``OffloadEngine`` for the run and enters a step
of it at the start and leaves it at the end, so everything autograd saves in that step's
forward and backward goes through the engine, nothing outside a step does, and each step
prefetches in the unpack order the previous step learned. Its ``stats`` is the engine's:
the run's totals, and ``stats.last_step`` the last step's own figures.

Which module the plan's scopes name: ``module="net"`` (a submodule's qualified name), or
else the module whose class is the plan's ``model_class`` (found inside a wrapper such as
a LightningModule), or else the model the framework hands over. After the first step one
line says what was swapped (a warning when a swapping plan swapped nothing).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

from swapseg.errors import InputError
from swapseg.integrations._plan import MemoryPlan, SwapPolicy, SwapStats
from swapseg.offload import OffloadEngine, as_plan

__all__ = ["StepSwapper", "find_module"]

log = logging.getLogger("swapseg.integrations")


def _class_name(m: nn.Module) -> str:
    return f"{type(m).__module__}:{type(m).__qualname__}"


def find_module(model: nn.Module, plan: MemoryPlan, module: str | None = None
                ) -> tuple[str, nn.Module]:
    """(qualified name, module) whose module names the plan's scopes are relative to."""
    names = [n for n, _ in model.named_modules() if n]
    if module is not None:
        try:
            return module, model.get_submodule(module)
        except AttributeError:
            near = difflib.get_close_matches(module, names, n=5, cutoff=0.3)
            raise InputError(f"module {module!r} is not a submodule of {type(model).__name__}"
                             f" (nearest: {', '.join(near) or '-'})") from None
    if plan.model_class:
        for name, m in model.named_modules():
            if _class_name(m) == plan.model_class:
                return name, m
        raise InputError(f"the plan was made for {plan.model_class}, and no module of "
                         f"{_class_name(model)} is one (pass module=\"NAME\" to choose one)")
    return "", model


class StepSwapper:
    """One engine for ``plan`` over a run, entered per framework step; see the module doc."""

    def __init__(self, plan: MemoryPlan | SwapPolicy | None, *, module: str | None = None
                 ) -> None:
        self.plan = as_plan(plan)
        self.module = module
        """The qualified name of the module the plan's scopes are relative to (None: found
        from ``plan.model_class``, else the model itself); after ``open``, the one found."""
        self.engine: OffloadEngine | None = None
        self._model: nn.Module | None = None
        self._empty = SwapStats()
        self._reported = False

    @property
    def stats(self) -> SwapStats:
        """The run's totals (``last_step``: the last finished step's own figures)."""
        return self._empty if self.engine is None else self.engine.stats

    @property
    def current(self) -> SwapStats | None:
        """The engine's live counters while a step runs (None between steps)."""
        if self.engine is None or not self.engine.in_step:
            return None
        return self.engine.stats

    def open(self, model: nn.Module) -> OffloadEngine:
        """The run's engine for ``model`` (made on first use, or again for another model)."""
        if self.engine is not None and not self.engine.closed and self._model is model:
            return self.engine
        self.close()
        name, target = find_module(model, self.plan, self.module)
        self.engine = OffloadEngine(target, self.plan)
        self._model, self.module, self._reported = model, name, False
        return self.engine

    def begin(self, model: nn.Module) -> None:
        engine = self.open(model)
        if engine.in_step:  # the framework skipped the previous step's end
            self.end()
        engine.begin_step()

    def end(self, error: BaseException | None = None) -> None:
        """Leave the step (idempotent); after ``error`` the engine drops the step's copies."""
        if self.engine is None or not self.engine.in_step:
            return
        self.engine.end_step(error)
        if not self._reported and error is None:
            self._reported = True
            self._report()

    def _report(self) -> None:
        assert self.engine is not None
        st = self.engine.stats.last_step
        assert st is not None
        where = f"{self.module!r} ({type(self.engine.model).__name__})" if self.module \
            else type(self.engine.model).__name__
        line = (f"swapseg: first step of {where}: swapped {st.swapped} of {st.storages} "
                f"saved storages ({st.bytes_out / 2**20:.1f} MiB), "
                f"recomputed {len(self.engine.recomputed)} modules, "
                f"{st.prefetch_misses} prefetch misses")
        if self.plan.swap is not None and st.swapped == 0:
            log.warning("%s: the plan swaps nothing here (do its globs name modules of "
                        "this model? see docs/integrations.md)", line)
        else:
            log.info(line)

    @contextlib.contextmanager
    def step(self, model: nn.Module) -> Iterator[SwapStats]:
        """``with swapper.step(model): forward, loss, backward`` for loops we can wrap."""
        self.begin(model)
        try:
            yield self.stats
        except BaseException as exc:
            self.end(exc)
            raise
        self.end()

    def close(self) -> None:
        """End the run: the engine's hooks and wrappers go (idempotent)."""
        if self.engine is not None:
            self.end()
            self.engine.close()

    def summary(self) -> dict[str, Any]:
        """The plan and the totals, JSON-able (for logs)."""
        s = self.stats
        return {"plan": self.plan.to_dict(), "steps": s.steps, "packed": s.packed,
                "swapped": s.swapped, "bytes_out": s.bytes_out, "bytes_in": s.bytes_in,
                "kept": s.kept, "peak_saved_bytes": s.peak_saved_bytes}
