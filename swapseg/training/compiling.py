"""``--compile``: the training forward through ``torch.compile``, and what that means for swapping.

Compiling changes which tensors autograd saves, not whether the swap engine sees them.
AOTAutograd turns each compiled graph into one ``autograd.Function`` whose forward saves
the tensors its backward graph needs with ``ctx.save_for_backward``; those go through the
active ``saved_tensors_hooks`` like any other saved tensor, so the engine packs, dedups,
swaps and prefetches them. What differs from eager:

- the set: the partitioner chooses what to save and recomputes cheap pointwise results
  (norm outputs, activations) inside the backward kernels, so fewer tensors are saved,
  and intermediates fused into one kernel never exist as tensors at all;
- the timing: a graph's saved tensors are packed together when the graph's forward
  ends, not one by one as each layer runs, so while that graph runs its activations are
  all on the device;
- the scopes: module forward hooks are traced into the graph, so every tensor of a
  compiled graph is packed under the scope active when the graph returns. Scope globs
  (``--swap-include``/``--swap-exclude``) therefore cannot tell layers inside one graph
  apart; ``n_tensors``, ``min_bytes`` and swap-all work as in eager.

Validation and prediction run the eager model (eval mode and other input sizes would
each compile again).

Compiling happens inside the first training step, which is why that step is long;
``compile_notice`` says so before it starts and how long it took after it ends, so a
silent first epoch does not look like a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["compile_model", "compile_notice", "BACKEND"]

BACKEND = "inductor"
"""torch.compile's default backend (generated C++/OpenMP kernels on a CPU, Triton on CUDA)."""


def compile_model(model: nn.Module, enabled: bool, backend: str | None = None) -> nn.Module:
    """``torch.compile(model, backend=backend or BACKEND)`` when ``enabled``, else ``model``.

    The compiled wrapper shares ``model``'s parameters; checkpoints keep saving the bare
    model's state_dict (the wrapper's keys carry an ``_orig_mod.`` prefix)."""
    return torch.compile(model, backend=backend or BACKEND) if enabled else model


def compile_notice(echo: Callable[[str], None],
                   then: Callable[[dict[str, Any]], None] | None = None
                   ) -> Callable[[dict[str, Any]], None]:
    """Echo "compiling..." now; the returned first-step callback echoes the time since
    (compiling and the first step), then calls ``then`` (an earlier first-step callback)."""
    echo(f"compiling the model (torch.compile, {BACKEND}): the first training step "
         "compiles it and takes longer...")
    t0 = time.perf_counter()

    def done(stats: dict[str, Any]) -> None:
        echo(f"compiled: the first step, compiling included, took "
             f"{time.perf_counter() - t0:.1f} s")
        if then is not None:
            then(stats)
    return done
