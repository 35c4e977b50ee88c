"""swap_activations: move the tensors autograd saves off the device, bring them back ahead of use.

How a step runs:

- forward: every tensor autograd saves passes through ``_pack``. Parameters, buffers,
  tensors under ``min_bytes``, excluded scopes and tensors past ``n_tensors`` are kept.
  The first pack of any other storage creates an entry and starts its copy-out; later
  packs of the same storage (views, or the same map saved by several ops) share the entry.
  Each pack returns a small handle (entry + view geometry); autograd holds the handle.
- backward: the first unpack (or the gradient reaching the model's output) starts the
  backward: a callback is queued for its end, and the first ``prefetch`` entries of the
  unpack order recorded in the previous step are loaded (reverse forward order in the
  first step). Each unpack waits for its own copy-in and starts the copy-in of the next
  ``prefetch`` entries. The engine drops its reference to a reloaded storage when the
  last live handle of its entry has been unpacked; autograd frees the rest.
- end of backward: reloaded copies still held are dropped, the unpack order is kept
  for the next step's prefetch. When autograd frees the graph, handles die and their
  entries give their host buffers back to the pool (or delete their files).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from swapseg.offload.policy import SwapPolicy
from swapseg.offload.stats import SwapStats
from swapseg.offload.tracker import (
    DedupTable,
    Entry,
    Handle,
    ScopeTracker,
    check_version,
    plain,
    scope_matches,
)
from swapseg.offload.transport import TransportSet

__all__ = ["swap_activations", "SwapEngine", "DISK_INFLIGHT_BYTES"]

#: Default bound on copy-out bytes in flight for the disk tier (others: unbounded).
DISK_INFLIGHT_BYTES = 256 * 2**20


class SwapEngine:
    """The saved-tensor hooks and their bookkeeping; use ``swap_activations``."""

    def __init__(self, model: nn.Module, policy: SwapPolicy, *, trace: bool = False,
                 workers: int | None = None, max_inflight_bytes: int | None = -1) -> None:
        self.model = model
        self.policy = policy
        if max_inflight_bytes == -1:
            max_inflight_bytes = DISK_INFLIGHT_BYTES if policy.tier == "disk" else None
        self.max_inflight_bytes = max_inflight_bytes
        self.stats = SwapStats()
        self.trace = trace
        self.workers = workers
        self.tracker = ScopeTracker(model)
        self._lock = threading.RLock()
        self._dedup = DedupTable()
        self._transports = TransportSet(policy.tier, policy.disk_dir, workers)
        self._entries: list[Entry] = []     # this step's entries, forward order
        self._live: set[Entry] = set()      # entries whose handles autograd still holds
        self._outs: list[Entry] = []        # copy-outs not yet harvested
        self._out_bytes = 0                 # their bytes (the throttle's in-flight count)
        self._next_id = 0
        self._eligible = 0
        self._new_step = True
        self._in_backward = False
        self._epoch = 0
        self._order: list[int] | None = None   # unpack order of the previous step
        self._order_n = -1                     # entry count of the step it was recorded in
        self._plan: list[int] = []
        self._plan_pos: dict[int, int] = {}
        self._unpack_order: list[int] = []
        self._closed = False
        self._root_hook = model.register_forward_hook(self._on_output)
        self._branches = None
        if policy.swap_branches:
            from swapseg.offload.branches import BranchSwapper
            self._branches = BranchSwapper(self, model, lead=policy.prefetch)

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, e: Entry | None = None, t: float | None = None,
               **extra: Any) -> None:
        if not self.trace:
            return
        ev: dict[str, Any] = {"t": (t if t is not None else time.perf_counter()) - self.stats.t0,
                              "kind": kind, "step": self.stats.steps,
                              "resident_bytes": self.stats.device_bytes}
        if e is not None:
            ev.update(id=e.id, index=e.index, bytes=e.nbytes, scope=e.scope)
        ev.update(extra)
        self.stats.events.append(ev)

    def _resident(self, e: Entry, on: bool) -> None:
        if on and not e.resident:
            e.resident = True
            self.stats.add_resident(e.nbytes)
        elif not on and e.resident:
            e.resident = False
            self.stats.device_bytes -= e.nbytes

    def _transport(self, device: torch.device) -> Any:
        return self._transports.get(device)

    # ------------------------------------------------------------------ forward
    def pack(self, t: torch.Tensor) -> Any:
        with self._lock:
            st = self.stats
            scope = self.tracker.scope
            if not plain(t) or self.tracker.is_param_or_buffer(t):
                st.count(scope, "kept")
                return t
            if self._new_step and not self._in_backward:
                self._start_step()
            self._harvest()
            excluded = scope_matches(scope, self.policy.exclude)
            e = self._dedup.find(t)
            if e is not None and not (excluded and e.swap):
                st.count(scope, "deduplicated")
                self._event("dedup", e)
                return self._new_handle(e, t)
            return self._new_handle(self._new_entry(t, scope, excluded), t)

    def _new_entry(self, t: torch.Tensor, scope: str, excluded: bool) -> Entry:
        p = self.policy
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        eligible = (not excluded and nbytes >= p.min_bytes
                    and (not p.include or scope_matches(scope, p.include)))
        swap = eligible and (p.n_tensors < 0 or self._eligible < p.n_tensors)
        self._eligible += eligible
        e = Entry(id=self._next_id, index=len(self._entries), scope=scope, nbytes=nbytes,
                  device=t.device, swap=swap)
        self._next_id += 1
        self._entries.append(e)
        self._live.add(e)
        self._dedup.add(t, e)
        self._resident(e, True)
        self.stats.storages += 1
        self.stats.count(scope, "swapped" if swap else "kept", nbytes)
        self._event("pack", e, swap=swap)
        if not swap:
            return e
        src = torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage)
        e.device_tensor = src
        e.out_ticket = self._transport(t.device).start_out(src)
        self._outs.append(e)
        self._out_bytes += nbytes
        if self.max_inflight_bytes is not None:
            self._throttle(self.max_inflight_bytes)
        return e

    def _throttle(self, limit: int) -> None:
        """Wait for the oldest copy-outs while more than ``limit`` bytes are in flight.

        A slow tier (disk) would otherwise let forward run ahead and keep every source
        alive until its copy ends, which is the memory swapping was meant to free.
        """
        while self._out_bytes > limit and self._outs:
            o = self._outs.pop(0)
            if o.out_ticket is None:
                continue
            t0 = time.perf_counter()
            o.out_ticket.sync()
            self.stats.wait_s += time.perf_counter() - t0
            self._finish_out(o)

    def _new_handle(self, e: Entry, t: torch.Tensor) -> Handle:
        e.n_live += 1
        return Handle(self, e, t, keep=not e.swap)

    def _start_step(self) -> None:
        self._new_step = False
        self.stats.steps += 1
        self._entries = []
        self._eligible = 0
        self._dedup.clear()
        self._event("step_start")

    def _harvest(self, block: bool = False) -> None:
        """Collect finished copy-outs; their device storage is no longer the engine's."""
        pending = []
        for e in self._outs:
            if e.out_ticket is None:
                continue
            if block or e.out_ticket.done():
                self._finish_out(e)
            else:
                pending.append(e)
        self._outs = pending

    def _finish_out(self, e: Entry) -> None:
        ticket = e.out_ticket
        e.stored = ticket.result()
        e.out_ticket = None
        self._out_bytes -= e.nbytes
        self._event("out_start", e, t=ticket.start_t)
        self._event("out_end", e, t=ticket.end_t)
        if e.epoch != self._epoch or not self._in_backward:
            e.device_tensor = None
            self._resident(e, False)

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        for t in tree_flatten(output)[0]:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(self._on_output_grad)

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        with self._lock:
            if not self._in_backward:
                self._begin_backward()

    # ------------------------------------------------------------------ backward
    def _begin_backward(self) -> None:
        if self._branches is not None:
            self._branches.restore_all()  # backward may read a kept tensor's storage
        self._in_backward = True
        self._epoch += 1
        self.stats.backwards += 1
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward_cb)
        self._event("backward_start")
        self._harvest()
        n = len(self._entries)
        if self._order is not None and self._order_n == n:
            self._plan = self._order
        else:
            self._plan = list(range(n - 1, -1, -1))
        self._plan_pos = {idx: pos for pos, idx in enumerate(self._plan)}
        self._unpack_order = []
        self._prefetch_from(0)

    def _prefetch_from(self, pos: int) -> None:
        for idx in self._plan[pos:pos + self.policy.prefetch]:
            if idx < len(self._entries):
                e = self._entries[idx]
                if e.swap and not e.released and e.device_tensor is None \
                        and e.in_ticket is None and e.stored is not None \
                        and e.epoch != self._epoch:
                    self._start_in(e, ahead=True)

    def _start_in(self, e: Entry, ahead: bool) -> None:
        e.in_ticket = self._transport(e.device).start_in(e.stored, e.device)
        self.stats.bytes_in += e.nbytes
        self._resident(e, True)
        self._event("prefetch" if ahead else "demand", e)

    def unpack(self, h: Any) -> torch.Tensor:
        if not isinstance(h, Handle):
            return h
        with self._lock:
            if not self._in_backward:
                self._begin_backward()
            e = h.entry
            if e.released:
                raise RuntimeError("swapseg: a saved tensor was unpacked after its swap "
                                   "context released it (backward after an error?)")
            if h.tensor is not None:
                check_version(h, h.tensor._version)
                out = h.tensor
            else:
                orig = h.ref()
                if orig is not None:
                    check_version(h, orig._version)
                out = self._reload(e, h)
            self._count_unpack(e, h)
            return out

    def _reload(self, e: Entry, h: Handle) -> torch.Tensor:
        # a source whose copy-out is still in flight is used as it is
        if e.device_tensor is None:
            if e.in_ticket is None:
                self.stats.prefetch_misses += 1
                self._start_in(e, ahead=False)
            elif e.epoch != self._epoch:
                self.stats.prefetch_hits += 1
            t0 = time.perf_counter()
            ticket = e.in_ticket
            e.device_tensor = ticket.result()
            e.in_ticket = None
            e.reloaded = True
            waited = time.perf_counter() - t0
            self.stats.wait_s += waited
            self._event("in_start", e, t=ticket.start_t)
            self._event("in_end", e, t=ticket.end_t)
            if waited > 1e-4:
                self._event("wait", e, dur_s=waited)
        out = torch.empty(0, dtype=h.dtype, device=e.device)
        return out.set_(e.device_tensor.untyped_storage(), h.offset, h.size, h.stride)

    def _count_unpack(self, e: Entry, h: Handle) -> None:
        if e.epoch != self._epoch:
            e.epoch = self._epoch
            e.n_unpacked = 0
            if e.index < len(self._entries) and self._entries[e.index] is e:
                self._unpack_order.append(e.index)
                pos = self._plan_pos.get(e.index)
                if pos is not None:
                    self._prefetch_from(pos + 1)
            self._event("unpack", e)
        if h.epoch != self._epoch:
            h.epoch = self._epoch
            e.n_unpacked += 1
        if e.n_unpacked >= e.n_live:
            self._drop_device(e)

    def _drop_device(self, e: Entry) -> None:
        """The engine stops holding the device copy of ``e`` (autograd may still use it)."""
        if e.swap:
            if e.out_ticket is not None:
                self._finish_out(e)
                self._outs = [o for o in self._outs if o is not e]
            self._drop_reload(e)
        if e.resident:
            self._resident(e, False)
            self._event("free", e)

    def _drop_reload(self, e: Entry) -> None:
        """Hand the reloaded device copy of ``e`` (landed or in flight) back to the transport."""
        if e.in_ticket is not None:
            e.in_ticket.sync()
            self._transports.recycle(e.device, e.in_ticket.result())
            e.in_ticket = None
        elif e.reloaded:
            self._transports.recycle(e.device, e.device_tensor)
        e.device_tensor = None
        e.reloaded = False

    def _end_backward_cb(self) -> None:
        with self._lock:
            self._end_backward()

    def _end_backward(self) -> None:
        for e in list(self._live):
            if e.resident or e.device_tensor is not None or e.in_ticket is not None:
                self._drop_device(e)
        if self._unpack_order:
            self._order = self._unpack_order
            self._order_n = len(self._entries)
        self._in_backward = False
        self._new_step = True
        self._dedup.prune()
        self._event("backward_end")

    # ------------------------------------------------------------------ lifetime
    def _handle_dead(self, h: Handle) -> None:
        with self._lock:
            e = h.entry
            e.n_live -= 1
            if h.epoch == self._epoch and e.epoch == self._epoch:
                e.n_unpacked -= 1
            if e.n_live <= 0:
                self._release(e)
            elif self._in_backward and e.epoch == self._epoch and e.n_unpacked >= e.n_live:
                self._drop_device(e)

    def _release(self, e: Entry) -> None:
        if e.released:
            return
        e.released = True
        self._live.discard(e)
        if e.out_ticket is not None:
            e.out_ticket.sync()
            self._finish_out(e)
        self._drop_reload(e)
        self._resident(e, False)
        if e.stored is not None:
            self._transports.free(e.device, e.stored)
            e.stored = None
        self._event("release", e)
        if self._closed and not self._live:
            self._transports.close()

    def close(self, error: bool = False) -> None:
        """Remove hooks; after an error, release every entry so no buffer or file remains."""
        with self._lock:
            self._root_hook.remove()
            if self._branches is not None:
                self._branches.remove()
            self.tracker.remove()
            self._harvest(block=True)
            if error:
                for e in list(self._live):
                    self._release(e)
            self._closed = True
            # a graph that outlives the context may still unpack: copies then run inline
            self._transports.go_inline()
            if not self._live:
                self._transports.close()


@contextlib.contextmanager
def swap_activations(model: nn.Module, policy: SwapPolicy | None, *, trace: bool = False,
                     workers: int | None = None, max_inflight_bytes: int | None = -1
                     ) -> Iterator[SwapStats]:
    """Swap the tensors autograd saves inside this context, as ``policy`` says.

    Yields a live ``SwapStats``. ``policy=None`` installs nothing and yields empty stats.
    ``workers`` is the thread count of the host and disk tiers (0: copies run inline,
    which makes the resident-byte accounting deterministic). ``None`` (default): inline
    for CPU tensors on the host tier, where a copy thread would only compete with compute
    for the same cores, and one thread otherwise. ``max_inflight_bytes``
    makes a pack wait while more copy-out bytes are in flight (None: never; the default
    -1 means ``DISK_INFLIGHT_BYTES`` for the disk tier, None otherwise).
    """
    if policy is None:
        yield SwapStats()
        return
    engine = SwapEngine(model, policy, trace=trace, workers=workers,
                        max_inflight_bytes=max_inflight_bytes)
    failed = False
    try:
        with torch.autograd.graph.saved_tensors_hooks(engine.pack, engine.unpack):
            yield engine.stats
    except BaseException:
        failed = True
        raise
    finally:
        engine.close(error=failed)
