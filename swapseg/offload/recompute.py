"""Activation recomputation (checkpointing) of chosen module scopes.

Two modes, chosen per policy:

- ``full``: each chosen module runs under non-reentrant :func:`torch.utils.checkpoint.checkpoint`.
  Forward keeps only the module's inputs; backward re-runs the module to rebuild what its
  ops saved.
- ``speed``: the policy the reference paper ran from openai/gradient-checkpointing. Conv (and
  matmul) outputs are kept, everything cheap in between (instance norm, leaky ReLU, dropout,
  adds) is recomputed. Built on torch's selective activation checkpointing API
  (:func:`torch.utils.checkpoint.create_selective_checkpoint_contexts`).

Both preserve the RNG state, so dropout masks are replayed exactly and gradients are bitwise
equal to plain training.

Usage::

    with recompute(model, RecomputePolicy(scopes=("encoder.*",))):
        loss = loss_fn(model(x), y)
        loss.backward()
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from swapseg.errors import InputError
from swapseg.offload.policy import MODES, SPEED_KEEP_OPS, RecomputePolicy, scope_matches

__all__ = ["MODES", "SAVE_OPS", "RecomputePolicy", "recompute", "resolve_scopes", "speed_policy",
           "wrap_scopes", "unwrap_scopes"]

#: The ops whose outputs the speed policy keeps, as op overloads (policy.SPEED_KEEP_OPS
#: names their packets).
SAVE_OPS = frozenset(getattr(torch.ops.aten, name.split(".", 1)[1]).default
                     for name in SPEED_KEEP_OPS)


def _is_called(module: nn.Module) -> bool:
    # containers (ModuleList, ModuleDict) are never called; checkpointing them does nothing
    return type(module).forward is not nn.Module.forward


def resolve_scopes(model: nn.Module, scopes: tuple[str, ...]) -> list[str]:
    """Qualified names of the outermost called modules matching any glob in ``scopes``."""
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or not _is_called(module):
            continue
        if not scope_matches(name, scopes):
            continue
        if any(name.startswith(c + ".") for c in chosen):
            continue
        chosen.append(name)
    return chosen


def speed_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective-checkpoint policy: save conv/matmul outputs, recompute the rest."""
    if op in SAVE_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _speed_context() -> Any:
    return create_selective_checkpoint_contexts(speed_policy)


def _wrap(module: nn.Module, mode: str) -> None:
    orig = module.forward  # the bound class forward
    kwargs: dict[str, Any] = {"use_reentrant": False, "preserve_rng_state": True}
    if mode == "speed":
        kwargs["context_fn"] = _speed_context

    @functools.wraps(orig)
    def forward(*args: Any, **kw: Any) -> Any:
        if not torch.is_grad_enabled():
            return orig(*args, **kw)  # nothing is saved without grad; skip the overhead
        return checkpoint(orig, *args, **kw, **kwargs)

    module.forward = forward  # type: ignore[method-assign]


def wrap_scopes(model: nn.Module, policy: RecomputePolicy) -> list[tuple[str, nn.Module]]:
    """Checkpoint the modules ``policy`` chooses until :func:`unwrap_scopes`; returns
    them by qualified name. Raises InputError (wrapping nothing) when no module matches
    or one is already wrapped."""
    names = resolve_scopes(model, policy.scopes)
    if not names:
        raise InputError(f"recompute scopes {list(policy.scopes)} match no module of "
                         f"{type(model).__name__}")
    modules = dict(model.named_modules())
    for n in names:
        if "forward" in modules[n].__dict__:
            raise InputError(f"module {n!r} already has a patched forward "
                             "(nested recompute contexts?)")
    for n in names:
        _wrap(modules[n], policy.mode)
    return [(n, modules[n]) for n in names]


def unwrap_scopes(wrapped: list[tuple[str, nn.Module]]) -> None:
    """Give the modules ``wrap_scopes`` wrapped their class forward back."""
    for _, m in wrapped:
        m.__dict__.pop("forward", None)


@contextlib.contextmanager
def recompute(model: nn.Module, policy: RecomputePolicy | None) -> Iterator[list[str]]:
    """Checkpoint the modules chosen by ``policy`` while the context is open.

    Yields the qualified names of the checkpointed modules. ``policy=None`` does nothing.
    The modules' forwards are restored on exit, even when the body raises.
    """
    if policy is None:
        yield []
        return
    wrapped = wrap_scopes(model, policy)
    try:
        yield [n for n, _ in wrapped]
    finally:
        unwrap_scopes(wrapped)
