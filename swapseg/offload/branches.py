"""swap_branches: free skip-connection outputs during forward, until the decoder needs them.

Pack hooks cannot free an encoder output that the model itself keeps in a Python list
for the decoder: the storage stays alive whatever autograd does with it. This module
frees it in place: once the engine has a host copy of the storage (the tensor is also
saved for backward, so it has one), the storage is resized to 0 bytes; before the next
use it is resized back and refilled from the host copy. The tensor object, its views and
its version counter never change.

Which outputs, and when: a ``TorchFunctionMode`` counts torch calls ("ops") during the
model's forward. In every forward, each output of a submodule is followed by the ops
that read its storage. An output whose longest gap between uses is at least
``MIN_GAP_OPS`` is a branch: in the next forward it is evicted after the use that opens
the gap, the copy back starts ``lead`` ops before the use that closes it.

Safety does not rest on that schedule: every op first restores any evicted storage among
its arguments, and everything still evicted is restored when the model's forward
returns, so code after forward (and backward) always sees the data.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["BranchSwapper", "BranchHost", "MIN_GAP_OPS", "PENDING"]

#: Uses closer than this (in torch calls) are "near": not worth a round trip.
MIN_GAP_OPS = 24

#: ``BranchHost.host_copy``: the storage's copy-out has not finished yet.
PENDING = "pending"


class BranchHost(Protocol):
    """What the swapper needs from the engine. ``entry`` values are opaque tokens."""

    def is_param_or_buffer(self, t: torch.Tensor) -> bool:
        """Parameters and buffers are never evicted."""
        ...

    def host_copy(self, t: torch.Tensor) -> Any:
        """A token for the finished host copy of ``t``'s storage, ``PENDING`` while the
        copy runs, or None when there is none (not saved, kept, or modified since)."""
        ...

    def evicted(self, entry: Any) -> None:
        """The storage of ``entry`` was freed (counted, traced)."""
        ...

    def start_restore(self, entry: Any) -> Any:
        """Start copying ``entry`` back; returns a ticket."""
        ...

    def restore_into(self, t: torch.Tensor, entry: Any, ticket: Any) -> None:
        """Fill ``t``'s re-grown storage from ``ticket``."""
        ...


@dataclass(eq=False)
class _Branch:
    key: int
    ref: Any  # weakref to the output tensor: the swapper must not keep outputs alive
    ordinal: int
    nbytes: int
    entry: Any = None
    in_ticket: Any = None
    held: torch.Tensor | None = None  # strong reference only while evicted
    uses: list[int] = field(default_factory=list)

    def alive(self) -> torch.Tensor | None:
        t = self.ref()
        if t is None or t.untyped_storage()._cdata != self.key:
            return None
        return t


class _Clock(TorchFunctionMode):
    def __init__(self, owner: BranchSwapper) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.owner._tick(args, kwargs)
        return func(*args, **kwargs)


class BranchSwapper:
    """Evicts long-waiting submodule outputs during the forward of ``model``."""

    def __init__(self, engine: BranchHost, model: nn.Module, lead: int = 4) -> None:
        self.engine = engine
        self.lead = max(1, lead)
        self._plan: dict[int, tuple[int, int]] = {}   # ordinal -> (evict after, restore at)
        self._clock: _Clock | None = None
        self._hooks = [model.register_forward_pre_hook(self._enter),
                       model.register_forward_hook(self._exit, always_call=True)]
        self._hooks += [m.register_forward_hook(self._on_output)
                        for name, m in model.named_modules() if name]
        self._new_forward()

    def _new_forward(self) -> None:
        self.n = 0
        self._ordinal = 0
        self._by_key: dict[int, _Branch] = {}
        self._all: list[_Branch] = []
        self._evict_at: dict[int, list[_Branch]] = {}
        self._prefetch_at: dict[int, list[_Branch]] = {}
        self._pending: list[_Branch] = []
        self._evicted: dict[int, _Branch] = {}

    # ---------------------------------------------------------------- forward
    def _enter(self, module: nn.Module, args: Any) -> None:
        if self._clock is not None or not torch.is_grad_enabled():
            return
        self._new_forward()
        self._clock = _Clock(self)
        self._clock.__enter__()

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._clock is None:
            return
        self._clock.__exit__(None, None, None)
        self._clock = None
        self.restore_all()
        self._plan = self._make_plan()
        self._by_key, self._all = {}, []

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._clock is None:
            return
        for t in tree_flatten(output)[0]:
            if not isinstance(t, torch.Tensor) or type(t) is not torch.Tensor \
                    or t.layout != torch.strided or self.engine.is_param_or_buffer(t):
                continue
            key = t.untyped_storage()._cdata
            old = self._by_key.get(key)
            if (old is not None and old.alive() is not None) \
                    or t.untyped_storage().nbytes() == 0:
                continue
            b = _Branch(key, weakref.ref(t), self._ordinal, t.untyped_storage().nbytes(),
                        uses=[self.n])
            self._ordinal += 1
            self._by_key[key] = b
            self._all.append(b)
            when = self._plan.get(b.ordinal)
            if when is not None:
                evict_after, restore_at = when
                self._evict_at.setdefault(evict_after, []).append(b)
                self._prefetch_at.setdefault(max(evict_after + 1, restore_at - self.lead),
                                             []).append(b)

    def _tick(self, args: Any, kwargs: Any) -> None:
        self.n += 1
        # evict first, then restore what this op reads: an op never sees a freed storage
        self._pending += self._evict_at.pop(self.n - 1, [])
        if self._pending:
            self._try_evict()
        if self._by_key:
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    b = self._by_key.get(t.untyped_storage()._cdata)
                    if b is not None:
                        if self._evicted.get(b.key) is b:
                            self._restore(b)
                        b.uses.append(self.n)
        for b in self._prefetch_at.pop(self.n, []):
            # identity, not key: a dead branch's storage address may since have been
            # reused by another output that is evicted under the same key
            if self._evicted.get(b.key) is b and b.in_ticket is None:
                b.in_ticket = self.engine.start_restore(b.entry)

    def _try_evict(self) -> None:
        waiting = []
        for b in self._pending:
            t = b.alive()
            e = self.engine.host_copy(t) if t is not None else None
            if isinstance(e, str) and e == PENDING:
                waiting.append(b)
                continue
            if e is None:
                continue  # dead, not saved, kept by the policy, or modified since: stays
            try:
                t.untyped_storage().resize_(0)
            except RuntimeError:
                continue  # not resizable (shared with numpy, from_blob): stays
            b.entry, b.held = e, t
            self._evicted[b.key] = b
            self.engine.evicted(e)
        self._pending = waiting

    # ---------------------------------------------------------------- restore
    def _restore(self, b: _Branch) -> None:
        t = b.held
        assert t is not None
        ticket = b.in_ticket or self.engine.start_restore(b.entry)
        b.in_ticket = b.held = None
        t.untyped_storage().resize_(b.nbytes)
        del self._evicted[b.key]
        self.engine.restore_into(t, b.entry, ticket)  # the storage moved: re-keyed there

    def restore_all(self) -> None:
        """Bring every evicted storage back (end of forward, errors, closing)."""
        for b in list(self._evicted.values()):
            self._restore(b)
        self._pending = []

    def _make_plan(self) -> dict[int, tuple[int, int]]:
        plan = {}
        for b in self._all:
            gaps = [(b.uses[i + 1] - b.uses[i], i) for i in range(len(b.uses) - 1)]
            if gaps:
                gap, i = max(gaps)
                if gap >= MIN_GAP_OPS:
                    plan[b.ordinal] = (b.uses[i], b.uses[i + 1])
        return plan

    def remove(self) -> None:
        if self._clock is not None:
            self._clock.__exit__(None, None, None)
            self._clock = None
        self.restore_all()
        for h in self._hooks:
            h.remove()
        self._by_key = {}
