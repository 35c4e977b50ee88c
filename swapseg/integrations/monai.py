"""MONAI engines: run a SupervisedTrainer's iterations under swapping.

    stats = attach_swapping(trainer, SwapPolicy(prefetch=4))
    trainer.run()
    print(stats.swapped, stats.last_step.prefetch_misses)

To plan for the budget with the trainer's own loss, describe its target (built as zeros:
``(shape, dtype)`` at the input shape, batch included, or ``like_output()``)::

    from swapseg.integrations._plan import plan_search
    ev = plan_search(trainer.network, (2, 1, 96, 96, 96), "local", budget_bytes="8GiB",
                     loss_fn=trainer.loss_function,   # e.g. DiceCELoss(to_onehot_y=True)
                     target=((2, 1, 96, 96, 96), torch.int64))
    stats = attach_swapping(trainer, ev.plan)

One engine serves the whole run (``StepSwapper``): each iteration is one of its steps,
so every iteration after the first prefetches in the order the one before it learned.
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


def attach_swapping(trainer: SupervisedTrainer, policy_or_plan: SwapPolicy | MemoryPlan,
                    *, module: str | None = None) -> SwapStats:
    """Make each iteration of ``trainer`` (forward, loss, backward, optimizer step) a step
    of one swap engine over ``trainer.network``; returns the engine's stats, updated after
    every iteration (``last_step``: that iteration's own figures). ``module``: the
    submodule of the network whose names the plan's globs use (default: the plan's
    ``model_class``, else the network).

    The iteration function itself is wrapped, rather than hooked on ITERATION_STARTED /
    COMPLETED events, so an exception inside an iteration closes its step on its way out
    whatever exception handlers the engine has. The engine closes when the run completes.
    """
    if not isinstance(trainer, ignite.engine.Engine) or not hasattr(trainer, "network"):
        raise InputError(f"attach_swapping needs a MONAI trainer with a network, "
                         f"got {type(trainer).__name__}")
    if getattr(trainer, _ATTR, None) is not None:
        raise InputError("swapping is already attached to this trainer")
    swapper = StepSwapper(as_plan(policy_or_plan), module=module)
    swapper.open(trainer.network)
    iteration = trainer._process_function  # ignite's per-iteration callable

    @functools.wraps(iteration)
    def swapped_iteration(engine: Any, batch: Any) -> Any:
        with swapper.step(engine.network):
            return iteration(engine, batch)

    trainer._process_function = swapped_iteration
    trainer.add_event_handler(ignite.engine.Events.COMPLETED, lambda _: swapper.close())
    setattr(trainer, _ATTR, swapper)
    return swapper.stats
