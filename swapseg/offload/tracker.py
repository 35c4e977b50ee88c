"""Module scopes and saved-tensor records.

``ScopeTracker`` keeps a stack of module qualified names with forward pre/post hooks, so
each tensor autograd saves can be tagged with the scope that saved it. ``Entry`` (from
``swapseg.offload.lifecycle``) is one record per unique storage saved in a step.
``DedupTable`` finds the entry of a storage that was already saved, and never hands back
an entry whose storage has died (a stale address is the classic silent gradient
corruption of storage-keyed caches).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from swapseg.offload.lifecycle import Entry
from swapseg.offload.policy import ROOT_SCOPE, scope_matches

__all__ = ["ScopeTracker", "Entry", "DedupTable", "Handle", "scope_matches", "storage_key",
           "plain", "check_version"]

def storage_key(t: torch.Tensor) -> tuple[str, int, int]:
    """(device, storage address, version): equal for a tensor and all its views."""
    return (str(t.device), t.untyped_storage().data_ptr(), t._version)


class ScopeTracker:
    """Stack of module names maintained by forward hooks on every submodule."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self._handles: list[Any] = []
        self._param_storages: set[int] = set()
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        for t in list(model.parameters()) + list(model.buffers()):
            self._param_storages.add(t.untyped_storage().data_ptr())
        self._model = model

    def _push(self, name: str):
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append(name)
        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def scope(self) -> str:
        return self.stack[-1] if self.stack else ROOT_SCOPE

    def is_param_or_buffer(self, t: torch.Tensor) -> bool:
        """Parameters, buffers and their views (``weight.t()``) are never swapped."""
        if isinstance(t, nn.Parameter):
            return True
        return t.untyped_storage().data_ptr() in self._param_storages

    def refresh_params(self) -> None:
        """Re-read parameter storages (after ``model.to()`` inside the context)."""
        self._param_storages = {t.untyped_storage().data_ptr()
                                for t in list(self._model.parameters())
                                + list(self._model.buffers())}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.stack.clear()


class DedupTable:
    """Maps storage keys to live entries; a dead storage never matches."""

    def __init__(self) -> None:
        self._table: dict[tuple[str, int, int], tuple[Entry, StorageWeakRef]] = {}

    def find(self, t: torch.Tensor) -> Entry | None:
        key = storage_key(t)
        hit = self._table.get(key)
        if hit is None:
            return None
        entry, weak = hit
        # the address alone is not an identity: a storage may die, or move (resize_),
        # and another take its old address
        if weak.expired() or entry.released or weak.cdata != t.untyped_storage()._cdata:
            del self._table[key]
            return None
        return entry

    def add(self, t: torch.Tensor, entry: Entry) -> None:
        self._table[storage_key(t)] = (entry, StorageWeakRef(t.untyped_storage()))

    def forget(self, t: torch.Tensor) -> None:
        self._table.pop(storage_key(t), None)

    def prune(self) -> None:
        """Forget entries whose storage died or whose entry was released."""
        dead = [k for k, (e, w) in self._table.items() if w.expired() or e.released]
        for k in dead:
            del self._table[k]

    def clear(self) -> None:
        self._table.clear()

    def __len__(self) -> int:
        return len(self._table)


class Handle:
    """What autograd holds instead of a saved tensor."""

    __slots__ = ("engine", "entry", "tensor", "ref", "version", "dtype", "size", "stride",
                 "offset", "epoch", "__weakref__")

    def __init__(self, engine: Any, entry: Entry, t: torch.Tensor, keep: bool) -> None:
        self.engine = engine
        self.entry = entry
        self.tensor = t if keep else None
        self.ref = None if keep else weakref.ref(t)
        self.version = t._version
        self.dtype, self.size, self.stride = t.dtype, t.size(), t.stride()
        self.offset = t.storage_offset()
        self.epoch = -1

    def __del__(self) -> None:
        try:
            self.engine.handle_dead(self)
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to free
            pass


def plain(t: torch.Tensor) -> bool:
    """Tensors the engine can move: dense, strided, no subclass, no lazy conj/neg bits."""
    return (type(t) in (torch.Tensor, nn.Parameter) and t.layout == torch.strided
            and not t.is_conj() and not t.is_neg() and t.device.type != "meta"
            and t.untyped_storage().nbytes() > 0)


def check_version(h: Handle, current: int) -> None:
    if current != h.version:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: saved at version {h.version}, now at version {current} "
            "(detected by swapseg's swap engine)")
