"""swap_activations: move the tensors autograd saves off the device, bring them back ahead of use.

How a step runs (each saved storage is an ``Entry`` whose life is one state of
``swapseg.offload.lifecycle``; resident bytes follow from those states):

- forward: every tensor autograd saves passes through ``pack``. Parameters, buffers,
  tensors under ``min_bytes``, excluded scopes and tensors past ``n_tensors`` are kept
  (``device``). The first pack of any other storage creates an entry and starts its
  copy-out (``leaving``); finished copy-outs are collected at later packs (``host``).
  Later packs of the same storage (views, or the same map saved by several ops) share
  the entry. Each pack returns a small handle (entry + view geometry).
- backward: the first unpack (or the gradient reaching the model's output) starts the
  backward: a callback is queued for its end, and the first ``prefetch`` entries of the
  unpack order recorded in the previous step start their copy-in (``returning``). Each
  unpack waits for its own copy-in (``back``) and starts the copy-in of the next
  ``prefetch`` entries. The engine drops its device copy when the last live handle of
  the entry has been unpacked (``host``; kept entries become ``spent``).
- end of backward: device copies still held are dropped, the unpack order is kept for
  the next step. When autograd frees the graph, handles die and their entries give
  their host buffers or files back (``released``).

A failed copy (a full disk) is raised at the next pack, unpack or context exit; the
context then releases every entry, so no buffer or file remains.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from swapseg.offload.branches import PENDING, BranchSwapper
from swapseg.offload.events import EventLog
from swapseg.offload.lifecycle import Entry
from swapseg.offload.policy import SwapPolicy
from swapseg.offload.schedule import PrefetchSchedule
from swapseg.offload.stats import SwapStats
from swapseg.offload.store import EntryStore
from swapseg.offload.tracker import (
    DedupTable,
    Handle,
    ScopeTracker,
    check_version,
    plain,
    scope_matches,
)
from swapseg.offload.transport import Ticket, TransportFactory, TransportSet

__all__ = ["swap_activations", "SwapEngine", "DISK_INFLIGHT_BYTES", "PENDING",
           "inflight_bound"]

#: Default bound on copy-out bytes in flight for the disk tier (others: unbounded).
DISK_INFLIGHT_BYTES = 256 * 2**20



def inflight_bound(policy: SwapPolicy) -> int | None:
    """The copy-out bytes in flight past which forward waits (None: no bound)."""
    if policy.max_inflight_bytes >= 0:
        return policy.max_inflight_bytes
    return DISK_INFLIGHT_BYTES if policy.tier == "disk" else None


class SwapEngine:
    """The saved-tensor hooks: when each entry moves (``EntryStore`` moves it)."""

    def __init__(self, model: nn.Module, policy: SwapPolicy, *, trace: bool = False,
                 workers: int | None = None, max_inflight_bytes: int | None = -1,
                 transport: TransportFactory | None = None) -> None:
        self.model = model
        self.policy = policy
        if max_inflight_bytes == -1:
            max_inflight_bytes = inflight_bound(policy)
        self.max_inflight_bytes = max_inflight_bytes
        self.stats = SwapStats()
        self.log = EventLog(self.stats, trace)
        self.tracker = ScopeTracker(model)
        self.store = EntryStore(self.stats, self.log, TransportSet(
            policy.tier, policy.disk_dir, workers, transport))
        self._lock = threading.RLock()
        self._dedup = DedupTable()
        self._schedule = PrefetchSchedule(policy.prefetch)
        self._entries: list[Entry] = []       # this step's entries, forward order
        self._next_id = 0
        self._eligible = 0
        self._new_step = True
        self._root_hook = model.register_forward_hook(self._on_output)
        self._branches = None
        if policy.swap_branches:
            self._branches = BranchSwapper(self, model, lead=policy.prefetch)

    def resident_bytes(self) -> int:
        """Bytes of the live entries in a resident state (equals ``stats.device_bytes``)."""
        with self._lock:
            return self.store.resident_bytes()

    def states(self) -> dict[str, int]:
        """How many live entries are in each state."""
        with self._lock:
            return self.store.states()

    # ------------------------------------------------------------------ forward
    def pack(self, t: torch.Tensor) -> Any:
        with self._lock:
            self.store.raise_error()
            st = self.stats
            scope = self.tracker.scope
            if not plain(t) or self.tracker.is_param_or_buffer(t):
                st.count(scope, "kept")
                return t
            if self._new_step and not self.store.in_backward:
                self._start_step()
            self.store.harvest()
            excluded = scope_matches(scope, self.policy.exclude)
            e = self._dedup.find(t)
            if e is not None and not (excluded and e.swap):
                st.count(scope, "deduplicated")
                self.log.emit("dedup", e)
                return self._new_handle(e, t)
            return self._new_handle(self._new_entry(t, scope, excluded), t)

    def _new_entry(self, t: torch.Tensor, scope: str, excluded: bool) -> Entry:
        p = self.policy
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        eligible = (not excluded and nbytes >= p.min_bytes
                    and (not p.include or scope_matches(scope, p.include)))
        swap = eligible and (p.n_tensors < 0 or self._eligible < p.n_tensors)
        if p.storages:  # a per-storage plan names each swapped entry by its forward index
            swap = len(self._entries) in p.storages
        self._eligible += eligible
        e = Entry(id=self._next_id, index=len(self._entries), scope=scope, nbytes=nbytes,
                  device=t.device, swap=swap)
        self._next_id += 1
        self._entries.append(e)
        self._dedup.add(t, e)
        self.store.add(e)
        self.stats.storages += 1
        self.stats.count(scope, "swapped" if swap else "kept", nbytes)
        self.log.emit("pack", e, swap=swap)
        if swap:
            self.store.start_out(e, torch.empty(0, dtype=torch.uint8,
                                                device=t.device).set_(storage))
            if self.max_inflight_bytes is not None:
                self.store.throttle(self.max_inflight_bytes)
        return e

    def _new_handle(self, e: Entry, t: torch.Tensor) -> Handle:
        e.n_live += 1
        return Handle(self, e, t, keep=not e.swap)

    def _start_step(self) -> None:
        self._new_step = False
        self.stats.steps += 1
        self._entries = []
        self._eligible = 0
        self._dedup.clear()
        self.log.emit("step_start")

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        for t in tree_flatten(output)[0]:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(self._on_output_grad)

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        with self._lock:
            if not self.store.in_backward:
                self._begin_backward()

    # ------------------------------------------------------------------ backward
    def _begin_backward(self) -> None:
        if self._branches is not None:
            self._branches.restore_all()  # backward may read a kept tensor's storage
        self.store.in_backward = True
        self.store.epoch += 1
        self.stats.backwards += 1
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward_cb)
        self.log.emit("backward_start")
        self.store.harvest()
        self.log.collect()
        self._prefetch(self._schedule.begin(len(self._entries)))

    def _prefetch(self, indices: list[int]) -> None:
        for idx in indices:
            if idx < len(self._entries):
                e = self._entries[idx]
                if e.state == "host" and e.epoch != self.store.epoch:
                    self.store.start_in(e, ahead=True)

    def unpack(self, h: Any) -> torch.Tensor:
        if not isinstance(h, Handle):
            return h
        with self._lock:
            self.store.raise_error()
            if not self.store.in_backward:
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
                data = self.store.reload(e)
                out = torch.empty(0, dtype=h.dtype, device=e.device).set_(
                    data.untyped_storage(), h.offset, h.size, h.stride)
            self._count_unpack(e, h)
            return out

    def _count_unpack(self, e: Entry, h: Handle) -> None:
        epoch = self.store.epoch
        if e.epoch != epoch:
            e.epoch = epoch
            e.n_unpacked = 0
            if e.index < len(self._entries) and self._entries[e.index] is e:
                self._prefetch(self._schedule.unpacked(e.index))
            self.log.emit("unpack", e)
        if h.epoch != epoch:
            h.epoch = epoch
            e.n_unpacked += 1
        if e.n_unpacked >= e.n_live:
            self.store.drop_device(e)

    def _end_backward_cb(self) -> None:
        with self._lock:
            self._end_backward()

    def _end_backward(self) -> None:
        store = self.store
        store.in_backward = False
        self._new_step = True
        self._schedule.end(len(self._entries))
        self._dedup.prune()
        try:
            store.each([e for e in store.live if e.resident], store.drop_device)
        finally:
            self.log.collect(block=self.log.trace)
            self.log.emit("backward_end")

    # ------------------------------------------------- the interface of swap_branches
    def is_param_or_buffer(self, t: torch.Tensor) -> bool:
        return self.tracker.is_param_or_buffer(t)

    def host_copy(self, t: torch.Tensor) -> Entry | str | None:
        """The entry whose stored copy holds ``t``'s storage now; ``PENDING`` while its
        copy-out runs; None when there is none (not saved, kept, or modified since)."""
        with self._lock:
            e = self._dedup.find(t)
            if e is None or not e.swap:
                return None
            if e.state == "leaving":
                if not e.out_ticket.done():
                    return PENDING
                self.store.finish_out(e)
            return e if e.state == "host" else None

    def evicted(self, e: Entry) -> None:
        """The storage whose copy is ``e`` was freed during forward."""
        with self._lock:
            self.stats.branch_evictions += 1
            self.stats.branch_bytes_out += e.nbytes
            self.log.emit("branch_out", e)

    def start_restore(self, e: Entry) -> Ticket:
        """Start copying ``e``'s stored copy back, for a storage evicted during forward."""
        with self._lock:
            return self.store.start_restore(e)

    def restore_into(self, t: torch.Tensor, e: Entry, ticket: Ticket) -> None:
        """Fill ``t``'s re-grown storage from ``ticket``; key it by its new address."""
        with self._lock:
            data = ticket.result()
            dst = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
            dst.copy_(data)
            self._dedup.add(t, e)
            self.stats.bytes_in += e.nbytes
            self.log.emit("branch_in", e)

    # ------------------------------------------------------------------ lifetime
    def handle_dead(self, h: Handle) -> None:
        """Autograd dropped a handle (never raises: failures are raised later)."""
        with self._lock:
            e = h.entry
            e.n_live -= 1
            epoch = self.store.epoch
            if h.epoch == epoch and e.epoch == epoch:
                e.n_unpacked -= 1
            try:
                if e.n_live <= 0:
                    self.store.release(e)
                elif self.store.in_backward and e.epoch == epoch \
                        and e.n_unpacked >= e.n_live:
                    self.store.drop_device(e)
            except Exception as exc:  # noqa: BLE001 - raised at the next pack/unpack/exit
                self.store.failed(exc)

    def close(self, error: bool = False) -> None:
        """Remove hooks; after an error, release every entry so no buffer or file remains.

        Raises a copy failure not raised yet (unless the context already fails).
        """
        store = self.store
        with self._lock:
            self._root_hook.remove()
            if self._branches is not None:
                self._branches.remove()
            self.tracker.remove()
            with contextlib.suppress(Exception):
                store.harvest(block=True)
            if error or store.error is not None:
                with contextlib.suppress(Exception):
                    store.each(store.live, store.release)
            store.closed = True
            # a graph that outlives the context may still unpack: copies then run inline
            store.transports.go_inline()
            self.log.collect(block=True)
            if not store.live:
                store.transports.close()
            if not error:
                store.raise_error()


@contextlib.contextmanager
def swap_activations(model: nn.Module, policy: SwapPolicy | None, *, trace: bool = False,
                     workers: int | None = None, max_inflight_bytes: int | None = -1,
                     transport: TransportFactory | None = None) -> Iterator[SwapStats]:
    """Swap the tensors autograd saves inside this context, as ``policy`` says.

    Yields a live ``SwapStats``. ``policy=None`` installs nothing and yields empty stats.
    ``workers`` is the thread count of the host and disk tiers (0: copies run inline,
    which makes the resident-byte accounting deterministic). ``None`` (default): inline
    for CPU tensors on the host tier, where a copy thread would only compete with compute
    for the same cores, and one thread otherwise. ``max_inflight_bytes``
    makes a pack wait while more copy-out bytes are in flight (None: never; the default
    -1 means the policy's ``max_inflight_bytes``, see ``inflight_bound``). ``transport``:
    ``factory(device) -> Transport`` replaces the tier's transports (see
    ``swapseg.offload.transport.Transport``).
    """
    if policy is None:
        yield SwapStats()
        return
    engine = SwapEngine(model, policy, trace=trace, workers=workers,
                        max_inflight_bytes=max_inflight_bytes, transport=transport)
    failed = False
    try:
        with torch.autograd.graph.saved_tensors_hooks(engine.pack, engine.unpack):
            yield engine.stats
    except BaseException:
        failed = True
        raise
    finally:
        engine.close(error=failed)
