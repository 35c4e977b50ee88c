"""Where each saved storage's bytes are: the entries, their state changes and their copies.

The engine (``engine.py``) decides when an entry moves; this module moves it. Every
change goes through ``EntryStore.move``, which checks the lifecycle's transition table
and adds the change in resident bytes to the stats, so resident bytes follow from the
states alone. A copy that fails (a full disk) is recorded in ``error`` and raised; the
entry is left in a state that can still be released.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from swapseg.offload.events import EventLog
from swapseg.offload.lifecycle import Entry, State
from swapseg.offload.stats import SwapStats
from swapseg.offload.transport import TransportSet

__all__ = ["EntryStore"]


class EntryStore:
    """The live entries of one swap context and the transports that hold their copies."""

    def __init__(self, stats: SwapStats, log: EventLog, transports: TransportSet) -> None:
        self.stats = stats
        self.log = log
        self.transports = transports
        self.live: set[Entry] = set()         # entries not released
        self._outs: dict[int, Entry] = {}     # copy-outs not yet collected, oldest first
        self.out_bytes = 0                    # their bytes (the throttle's in-flight count)
        self.epoch = 0                        # backward count; set by the engine
        self.in_backward = False
        self.error: BaseException | None = None
        self.closed = False

    # ------------------------------------------------------------------ states
    def move(self, e: Entry, new: State) -> None:
        self.stats.add_resident(e.move(new))

    def add(self, e: Entry) -> None:
        """A new entry, born on the device."""
        self.live.add(e)
        self.stats.add_resident(e.nbytes)

    def resident_bytes(self) -> int:
        return sum(e.nbytes for e in self.live if e.resident)

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.live:
            out[e.state] = out.get(e.state, 0) + 1
        return out

    def failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def each(self, entries: Iterable[Entry], fn: Callable[[Entry], None]) -> None:
        """``fn`` on every entry even if some fail; then the first failure is raised."""
        failed = False
        for e in list(entries):
            try:
                fn(e)
            except Exception as exc:  # noqa: BLE001 - recorded, raised below
                self.failed(exc)
                failed = True
        if failed:
            self.raise_error()

    # ------------------------------------------------------------------ copy-out
    def start_out(self, e: Entry, src: torch.Tensor) -> None:
        e.device_tensor = src
        tr = self.transports.get(e.device)
        e.out_ticket = tr.start_out(src)
        reserved = getattr(tr, "reserved_bytes", 0)  # the cuda tier's pinned pool
        self.stats.host_reserved_bytes = max(self.stats.host_reserved_bytes, reserved)
        self.move(e, "leaving")
        self._outs[e.id] = e
        self.out_bytes += e.nbytes

    def harvest(self, block: bool = False) -> None:
        """Collect finished copy-outs (all of them with ``block``)."""
        self.each([e for e in self._outs.values() if block or e.out_ticket.done()],
                  self.finish_out)

    def throttle(self, limit: int) -> None:
        """Wait for the oldest copy-outs while more than ``limit`` bytes are in flight.

        A slow tier (disk) would otherwise let forward run ahead and keep every source
        alive until its copy ends, which is the memory swapping was meant to free.
        """
        while self.out_bytes > limit and self._outs:
            o = next(iter(self._outs.values()))
            t0 = time.perf_counter()
            o.out_ticket.sync()
            self.stats.wait_s += time.perf_counter() - t0
            self.finish_out(o)

    def finish_out(self, e: Entry) -> None:
        """A copy-out has finished: the stored copy is the entry's; the source may go."""
        ticket, e.out_ticket = e.out_ticket, None
        del self._outs[e.id]
        self.out_bytes -= e.nbytes
        try:
            e.stored = ticket.result()
        except Exception:
            self.move(e, "device")  # the source stays where it is
            raise
        self.log.copied("out", e, ticket, stall=False)
        if e.epoch == self.epoch and self.in_backward:
            self.move(e, "back")  # this backward's unpack uses the source
        else:
            e.device_tensor = None
            self.move(e, "host")

    # ------------------------------------------------------------------ copy-in
    def start_in(self, e: Entry, ahead: bool) -> None:
        e.in_ticket = self.transports.get(e.device).start_in(e.stored, e.device)
        self.stats.bytes_in += e.nbytes
        self.move(e, "returning")
        self.log.emit("prefetch" if ahead else "demand", e)

    def reload(self, e: Entry) -> torch.Tensor:
        """The entry's bytes on the device (a source still leaving is used as it is)."""
        if e.state == "host":
            self.stats.prefetch_misses += 1
            self.start_in(e, ahead=False)
        elif e.state == "returning" and e.epoch != self.epoch:
            self.stats.prefetch_hits += 1
        if e.state == "returning":
            ticket, e.in_ticket = e.in_ticket, None
            try:
                e.device_tensor = ticket.result()
            except Exception:
                self.move(e, "host")
                raise
            e.reloaded = True
            self.move(e, "back")
            self.log.copied("in", e, ticket, stall=True)
        return e.device_tensor

    def drop_device(self, e: Entry) -> None:
        """The engine stops holding the device copy of ``e`` (autograd may still use it)."""
        if not e.resident:
            return
        if e.state == "leaving":
            self.finish_out(e)
        if e.state in ("returning", "back"):
            self._drop_reload(e)
        elif e.state == "device":
            self.move(e, "spent")
        self.log.emit("free", e)

    def _drop_reload(self, e: Entry) -> None:
        """Hand the device copy of ``e`` (landed or in flight) back to the transport."""
        tr = self.transports.get(e.device)
        if e.state == "returning":
            ticket, e.in_ticket = e.in_ticket, None
            ticket.sync()
            try:
                tr.recycle(ticket.result())
            except Exception as exc:  # noqa: BLE001 - nobody needed this copy
                self.failed(exc)
            self.log.copied("in", e, ticket, stall=False)
        elif e.reloaded:
            tr.recycle(e.device_tensor)
        e.device_tensor = None
        e.reloaded = False
        self.move(e, "host")

    # ------------------------------------------------------------------ lifetime
    def release(self, e: Entry) -> None:
        """Autograd freed the entry's last handle (or the context failed): it goes."""
        if e.released:
            return
        self.live.discard(e)
        try:
            if e.state == "leaving":
                self.finish_out(e)
            if e.state in ("returning", "back"):
                self._drop_reload(e)
        except Exception as exc:  # noqa: BLE001 - the entry goes regardless
            self.failed(exc)
        if e.stored is not None:
            self.transports.get(e.device).free(e.stored)
            e.stored = None
        e.device_tensor = e.out_ticket = e.in_ticket = None
        self.move(e, "released")
        self.log.emit("release", e)
        if self.closed and not self.live:
            self.transports.close()

    def start_restore(self, e: Entry) -> Any:
        if e.released:
            raise RuntimeError("swapseg: an evicted tensor's copy was released before it "
                               "was restored")
        return self.transports.get(e.device).start_in(e.stored, e.device)
