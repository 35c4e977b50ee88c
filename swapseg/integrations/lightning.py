"""Lightning: a callback that swaps inside each training step.

    cb = SwapCallback(SwapPolicy(prefetch=4))
    Trainer(callbacks=[cb]).fit(module, loader)
    print(cb.stats.swapped)

Needs ``pip install 'swapseg[lightning]'``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from swapseg.integrations._plan import MemoryPlan, SwapPolicy, SwapStats, as_plan
from swapseg.integrations.steps import StepSwapper

__all__ = ["SwapCallback"]


class SwapCallback(pl.Callback):
    """Opens the plan at ``on_train_batch_start`` and closes it at ``on_train_batch_end``:
    Lightning runs ``training_step``, the backward and the optimizer step in between, so
    the step's forward and backward go through the engine and validation does not.
    An exception closes it in ``on_exception``.
    """

    def __init__(self, policy_or_plan: SwapPolicy | MemoryPlan) -> None:
        super().__init__()
        self.swapper = StepSwapper(as_plan(policy_or_plan))

    @property
    def stats(self) -> SwapStats:
        """The finished steps' counters, added up (live between steps)."""
        return self.swapper.stats

    @property
    def plan(self) -> MemoryPlan:
        return self.swapper.plan

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.swapper.begin(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.swapper.end()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.swapper.end(exception)
