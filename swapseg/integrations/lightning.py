"""Lightning: a callback that swaps inside each training step.

    cb = SwapCallback(SwapPolicy(prefetch=4))            # or SwapCallback(plan, module="net")
    Trainer(callbacks=[cb]).fit(module, loader)
    print(cb.stats.swapped, cb.stats.last_step.prefetch_misses)

Needs ``pip install 'swapseg[lightning]'``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from swapseg.integrations._plan import MemoryPlan, SwapPolicy, SwapStats, as_plan
from swapseg.integrations.steps import StepSwapper

__all__ = ["SwapCallback"]


class SwapCallback(pl.Callback):
    """Enters a step of one run-long engine at ``on_train_batch_start`` and leaves it at
    ``on_train_batch_end``: Lightning runs ``training_step``, the backward and the
    optimizer step in between, so the step's forward and backward go through the engine
    and validation does not. An exception leaves the step in ``on_exception``; the engine
    closes at the end of ``fit``.

    ``module``: the submodule (``"net"``) whose names the plan's globs use; default: the
    module whose class is the plan's ``model_class``, else the LightningModule itself.
    """

    def __init__(self, policy_or_plan: SwapPolicy | MemoryPlan, *,
                 module: str | None = None) -> None:
        super().__init__()
        self.swapper = StepSwapper(as_plan(policy_or_plan), module=module)

    @property
    def stats(self) -> SwapStats:
        """The run's counters (live); ``stats.last_step``: the last step's own figures."""
        return self.swapper.stats

    @property
    def plan(self) -> MemoryPlan:
        return self.swapper.plan

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swapper.open(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.swapper.begin(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.swapper.end()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swapper.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.swapper.end(exception)
        self.swapper.close()
