"""The ordering bookkeeping of the CUDA double: vector clocks and per-block access logs.

Each stream keeps a vector clock: for every stream, the last of its ops known to be
ordered before the stream's next op (through ``wait_event``, or what the host observed
complete before queuing it). Each device or pinned block keeps the last write and the
reads since, per stream, as ``(epoch, what)``. An access conflicts with a logged one of
another stream (write against anything, read against a write) unless the accessing
stream's clock has passed that epoch. A device block freed by the program is reused by
its allocation stream, so at the free every other stream's access must be ordered
before that stream's next op, or named by ``record_stream``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_flatten

__all__ = ["Race", "Block", "BlockLog", "merge"]

aten = torch.ops.aten
#: ops that touch no data (views, metadata, fresh allocations shaped like an input)
_NO_ACCESS = {aten.set_, aten.detach, aten.alias, aten.empty_like, aten.new_empty,
              aten.new_empty_strided, aten.is_pinned, aten.sym_size, aten.sym_stride,
              aten.sym_numel, aten.sym_storage_offset, aten.is_same_size, aten.resize_,
              aten._has_compatible_shallow_copy_type, aten.lift_fresh, aten.zeros_like,
              aten.ones_like}


class Race(AssertionError):
    """The stream protocol was broken: the message names the buffer and the copy."""


def merge(into: dict[int, int], other: dict[int, int]) -> None:
    for k, v in other.items():
        if into.get(k, 0) < v:
            into[k] = v


def _key(t: torch.Tensor) -> tuple[int, Any]:
    s = t.untyped_storage()
    return s._cdata, s


class Block:
    """One storage: who wrote and read it, on which stream, at which epoch."""

    def __init__(self, ref: StorageWeakRef, alloc: Any, name: str) -> None:
        self.ref, self.alloc, self.name = ref, alloc, name
        self.writes: dict[int, tuple[int, str]] = {}
        self.reads: dict[int, tuple[int, str]] = {}
        self.recorded: set[int] = set()  # streams named by record_stream
        self.pending: list[str] = []     # queued ops that hold and touch this block


class BlockLog:
    """Every block a side stream has touched, and the checks on each access and free."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.device: dict[int, Block] = {}  # freed by the program: checked at the free
        self.host: dict[int, Block] = {}    # pinned, owned by a pool
        self.names = 0

    def _fail(self, msg: str) -> None:
        self.rt.races.append(msg)
        raise Race(msg)

    def find(self, t: torch.Tensor) -> Block | None:
        cdata, _ = _key(t)
        return self.device.get(cdata) or self.host.get(cdata)

    def _new(self, t: torch.Tensor, alloc: Any, what: str) -> Block:
        cdata, storage = _key(t)
        self.names += 1
        b = Block(StorageWeakRef(storage), alloc, f"{what} #{self.names}")
        (self.host if alloc is None else self.device)[cdata] = b
        return b

    def allocated(self, t: torch.Tensor, stream: Any, what: str) -> Block:
        """A block the runtime made: a device block counts as written by its stream now
        (the caching allocator hands out memory that stream's earlier work used)."""
        b = self._new(t, stream, what)
        if stream is not None:
            b.writes[stream.id] = (stream.epoch, f"{stream.name}'s earlier use of the block")
        return b

    def block(self, t: torch.Tensor, side: Any) -> Block:
        """The block of ``t``; one the program made counts as written by compute now."""
        b = self.find(t)
        if b is None:
            compute = self.rt.compute
            b = self._new(t, compute, f"program storage of {t.numel()} B")
            b.writes[compute.id] = (compute.epoch, "compute's last write")
        return b

    def access(self, b: Block, s: Any, epoch: int, kind: str, what: str) -> None:
        logged = [b.writes] if kind == "r" else [b.writes, b.reads]
        for log in logged:
            for sid, (e, other) in log.items():
                if sid != s.id and s.vc.get(sid, 0) < e:
                    verb = "reads" if kind == "r" else "writes"
                    self._fail(f"{what} {verb} {b.name} while {other} on "
                               f"{self.rt.streams[sid].name} is not ordered before it")
        if kind == "w":
            b.writes, b.reads = {s.id: (epoch, what)}, {}
        else:
            b.reads[s.id] = (epoch, what)

    def compute(self, func: Any, args: tuple, kwargs: dict, s: Any) -> None:
        """An aten op on the compute stream: reads its inputs, writes its mutable args."""
        if func.is_view or func.overloadpacket in _NO_ACCESS:
            return
        schema = func._schema.arguments
        for i, a in enumerate(schema):
            v = args[i] if i < len(args) else kwargs.get(a.name)
            write = a.alias_info is not None and a.alias_info.is_write
            for t in tree_flatten(v)[0]:
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    b = self.find(t)
                    if b is not None:
                        self.access(b, s, s.epoch, "w" if write else "r",
                                    f"compute op {func}")

    def scan_frees(self) -> None:
        """Check the device blocks the program has dropped since the last call."""
        for cdata, b in list(self.device.items()):
            if b.ref.expired():
                gone = True
            else:
                # the program's holders: all but the queued ops' aliases and the
                # storage's own Python object
                gone = torch._C._storage_Use_Count(b.ref.cdata) <= 1 + len(b.pending)
            if gone:
                del self.device[cdata]
                self._freed(b)

    def _freed(self, b: Block) -> None:
        alloc = b.alloc
        ordered = dict(alloc.vc)
        merge(ordered, self.rt.host_vc)
        for log in (b.writes, b.reads):
            for sid, (e, what) in log.items():
                if sid != alloc.id and sid not in b.recorded and ordered.get(sid, 0) < e:
                    self._fail(f"{b.name} freed while {what} on {self.rt.streams[sid].name} "
                               f"may still touch it: that stream was neither waited on "
                               f"by {alloc.name} nor named by record_stream")
