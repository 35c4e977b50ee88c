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
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["compile_model", "BACKEND"]

BACKEND = "inductor"
"""torch.compile's default backend (generated C++/OpenMP kernels on a CPU, Triton on CUDA)."""


def compile_model(model: nn.Module, enabled: bool, backend: str | None = None) -> nn.Module:
    """``torch.compile(model, backend=backend or BACKEND)`` when ``enabled``, else ``model``.

    The compiled wrapper shares ``model``'s parameters; checkpoints keep saving the bare
    model's state_dict (the wrapper's keys carry an ``_orig_mod.`` prefix)."""
    return torch.compile(model, backend=backend or BACKEND) if enabled else model
