"""MONAI engines: run a SupervisedTrainer's iterations under swapping.

    stats = attach_swapping(trainer, SwapPolicy(prefetch=4))
    trainer.run()
    print(stats.swapped, stats.bytes_out)

Needs ``pip install 'swapseg[monai]'`` (MONAI's engines run on pytorch-ignite).
"""

from __future__ import annotations

import functools
from typing import Any

import ignite.engine
from monai.engines import SupervisedTrainer

from swapseg.errors import InputError
from swapseg.integrations._plan import MemoryPlan, SwapPolicy, SwapStats, as_plan
from swapseg.integrations.steps import StepSwapper

__all__ = ["attach_swapping"]

_ATTR = "_swapseg_swapper"


def attach_swapping(trainer: SupervisedTrainer,
                    policy_or_plan: SwapPolicy | MemoryPlan) -> SwapStats:
    """Make each iteration of ``trainer`` (forward, loss, backward, optimizer step) run
    under ``policy_or_plan`` on ``trainer.network``; returns the stats, updated after
    every iteration.

    The iteration function itself is wrapped, rather than hooked on ITERATION_STARTED /
    COMPLETED events, so an exception inside an iteration closes the swap context on its
    way out whatever exception handlers the engine has.
    """
    if not isinstance(trainer, ignite.engine.Engine) or not hasattr(trainer, "network"):
        raise InputError(f"attach_swapping needs a MONAI trainer with a network, "
                         f"got {type(trainer).__name__}")
    if getattr(trainer, _ATTR, None) is not None:
        raise InputError("swapping is already attached to this trainer")
    swapper = StepSwapper(as_plan(policy_or_plan))
    iteration = trainer._process_function  # ignite's per-iteration callable

    @functools.wraps(iteration)
    def swapped_iteration(engine: Any, batch: Any) -> Any:
        with swapper.step(engine.network):
            return iteration(engine, batch)

    trainer._process_function = swapped_iteration
    setattr(trainer, _ATTR, swapper)
    return swapper.stats
