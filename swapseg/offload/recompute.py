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
import fnmatch
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from swapseg.errors import InputError
from swapseg.records import check_fields, json_object

__all__ = ["MODES", "SAVE_OPS", "RecomputePolicy", "recompute", "resolve_scopes", "speed_policy"]

MODES = ("full", "speed")

#: Ops whose outputs the speed policy keeps: the expensive ones. Everything else inside a
#: checkpointed scope is recomputed in backward.
SAVE_OPS = frozenset({
    torch.ops.aten.convolution.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
})


@dataclass(frozen=True)
class RecomputePolicy:
    scopes: tuple[str, ...] = ("*",)
    """Globs over module qualified names. The outermost called modules that match are
    checkpointed (a match inside an already matched module is part of it)."""

    mode: str = "full"
    """``full`` recomputes everything inside each scope; ``speed`` keeps conv/matmul outputs
    and recomputes the rest."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", tuple(self.scopes))
        if self.mode not in MODES:
            raise InputError(f"recompute mode must be one of {', '.join(MODES)}, "
                             f"got {self.mode!r}")
        if not self.scopes:
            raise InputError("RecomputePolicy needs at least one scope glob")
        for s in self.scopes:
            if not isinstance(s, str) or not s:
                raise InputError(f"recompute scope must be a non-empty glob, got {s!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"scopes": list(self.scopes), "mode": self.mode}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecomputePolicy:
        check_fields(cls, d, "RecomputePolicy")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> RecomputePolicy:
        return cls.from_dict(json_object(text, "recompute policy"))


def _is_called(module: nn.Module) -> bool:
    # containers (ModuleList, ModuleDict) are never called; checkpointing them does nothing
    return type(module).forward is not nn.Module.forward


def resolve_scopes(model: nn.Module, scopes: tuple[str, ...]) -> list[str]:
    """Qualified names of the outermost called modules matching any glob in ``scopes``."""
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or not _is_called(module):
            continue
        if not any(fnmatch.fnmatchcase(name, g) for g in scopes):
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


@contextlib.contextmanager
def recompute(model: nn.Module, policy: RecomputePolicy | None) -> Iterator[list[str]]:
    """Checkpoint the modules chosen by ``policy`` while the context is open.

    Yields the qualified names of the checkpointed modules. ``policy=None`` does nothing.
    The modules' forwards are restored on exit, even when the body raises.
    """
    if policy is None:
        yield []
        return
    names = resolve_scopes(model, policy.scopes)
    if not names:
        raise InputError(f"recompute scopes {list(policy.scopes)} match no module of "
                         f"{type(model).__name__}")
    modules = dict(model.named_modules())
    wrapped: list[nn.Module] = []
    try:
        for n in names:
            m = modules[n]
            if "forward" in m.__dict__:
                raise InputError(f"module {n!r} already has a patched forward "
                                 "(nested recompute contexts?)")
            _wrap(m, policy.mode)
            wrapped.append(m)
        yield names
    finally:
        for m in wrapped:
            del m.forward  # back to the class method
