"""The cuda tier: pinned host buffers, a side stream per direction, events; nothing else.

The protocol (docs/swapping.md, "CUDA protocol"), every step named after the race it
prevents:

- copy-out: the out stream waits on the compute stream (``src`` is written there), the
  copy runs on the out stream into a pooled pinned buffer, and ``record_stream`` ties
  ``src``'s block to the out stream, so it is not handed out again before the copy ends
  whoever drops ``src`` first;
- copy-in: the destination is allocated on the compute stream, the in stream waits on
  the compute stream (the block may still be in compute's use, and the stored copy was
  written by a copy-out the compute stream has waited on), and ``record_stream`` ties
  the destination to the in stream, so a reload dropped before it lands is not reused
  under the copy;
- ``result()``: the consumer's stream waits on the copy's end event; the host never
  blocks;
- ``free``: a pinned buffer goes back to the pool only once events recorded on both
  side streams have completed, so no later copy-out writes it while a copy reads it.

Each copy is bracketed by two timing events on its side stream, so its ticket knows
when the copy really ran on the device, not when the host queued it. At ``result()``
a third event is recorded on the consumer's stream just before it waits: how long the
consumer stalled is ``end - ready`` when positive. Device times become host
``perf_counter`` seconds through one anchor: an event recorded, synchronized and read
against the host clock when the transport is made.

All primitives come from a ``CudaRuntime`` (``cuda_runtime``): real ``torch.cuda`` by
default, a CPU double in the tests.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from swapseg.offload.transport.base import Ticket
from swapseg.offload.transport.cuda_runtime import (
    CudaRuntime,
    TorchCuda,
    pin_memory_enabled,
    pinned_reserved_bytes,
)
from swapseg.offload.transport.pool import BufferPool, get_pool

__all__ = ["CudaTransport", "EventTicket", "EventClock"]

_WARNED: set[str] = set()  # one pageable-fallback warning per process


def _warn_pageable(why: str) -> None:
    if not _WARNED:
        _WARNED.add(why)
        warnings.warn(f"swapseg: the cuda tier uses pageable host buffers ({why}); copies "
                      f"to and from them are slower and may block the host", RuntimeWarning,
                      stacklevel=3)


class EventClock:
    """Maps device events to host ``perf_counter`` seconds."""

    def __init__(self, anchor: Any, host_t: float) -> None:
        self.anchor = anchor
        self.host_t = host_t

    @classmethod
    def start(cls, stream: Any, event_cls: Any) -> EventClock:
        ev = event_cls(enable_timing=True)
        ev.record(stream)
        ev.synchronize()
        return cls(ev, time.perf_counter())

    def seconds(self, event: Any) -> float:
        return self.host_t + self.anchor.elapsed_time(event) / 1e3


class EventTicket(Ticket):
    """A device copy between ``start`` and ``end`` events, consumed on the stream that
    ``consumer()`` returns when ``result()`` is called (the caller's current stream)."""

    def __init__(self, value: Any, start: Any, end: Any, clock: EventClock,
                 consumer: Callable[[], Any], event_cls: Any) -> None:
        super().__init__(None, value)
        self._start, self._end, self._clock = start, end, clock
        self._consumer, self._event_cls = consumer, event_cls
        self._ready: Any = None

    def done(self) -> bool:
        return bool(self._end.query())

    def result(self) -> Any:
        if self._ready is None:
            # the consumer's stream waits on the copy; the host does not block
            stream = self._consumer()
            self._ready = self._event_cls(enable_timing=True)
            self._ready.record(stream)
            stream.wait_event(self._end)
        return self._value

    def sync(self) -> None:
        self._end.synchronize()
        if self._ready is not None:
            self._ready.synchronize()

    def timed(self) -> bool:
        if not self.done() or (self._ready is not None and not self._ready.query()):
            return False
        if self.end_t is None:
            self.start_t = self._clock.seconds(self._start)
            self.end_t = self._clock.seconds(self._end)
            if self._ready is not None:
                self.wait_s = max(0.0, self._ready.elapsed_time(self._end) / 1e3)
                self.wait_end_t = max(self.end_t, self._clock.seconds(self._ready))
        return True


class CudaTransport:
    """Pinned host buffers, a side stream per direction, timing events.

    ``pin``: page-locked host buffers (default: unless ``SWAPSEG_PIN_MEMORY=0``); when
    pinning is off or fails, pageable buffers, with one warning per process.
    """

    kind = "cuda"

    def __init__(self, device: torch.device, pool: BufferPool | None = None,
                 runtime: CudaRuntime | None = None, pin: bool | None = None) -> None:
        self.device = device
        self.rt: CudaRuntime = runtime if runtime is not None else TorchCuda()
        self.pin = pin_memory_enabled() if pin is None else pin
        if not self.pin:
            _warn_pageable("SWAPSEG_PIN_MEMORY=0" if pin is None else "pinning disabled")
        self.pool = pool if pool is not None else get_pool(self.pin)
        self.out_stream = self.rt.Stream(device)
        self.in_stream = self.rt.Stream(device)
        self.clock = EventClock.start(self.out_stream, self.rt.Event)
        self._limbo: list[tuple[torch.Tensor, Any, Any]] = []  # freed, copies maybe running

    # ------------------------------------------------------------------ host buffers
    def _alloc_host(self, nbytes: int) -> tuple[torch.Tensor, int]:
        if self.pin:
            try:
                return self.rt.pinned(nbytes), pinned_reserved_bytes(nbytes)
            except RuntimeError as exc:  # WSL2, a locked-memory limit, no driver memory
                self.pin = False
                _warn_pageable(f"pinning failed: {str(exc).splitlines()[0]}")
        return torch.empty(nbytes, dtype=torch.uint8), nbytes

    def _acquire(self, nbytes: int) -> torch.Tensor:
        self._drain()
        buf = self.pool.acquire(nbytes, self._alloc_host)
        self.rt.check_idle(buf, "handed out again")
        return buf

    def _drain(self, wait: bool = False) -> None:
        """Give back to the pool the freed buffers that no copy touches any more."""
        keep = []
        for buf, out_ev, in_ev in self._limbo:
            if wait:
                out_ev.synchronize()
                in_ev.synchronize()
            if out_ev.query() and in_ev.query():
                self.rt.check_idle(buf, "back to the pool")
                self.pool.release(buf)
            else:
                keep.append((buf, out_ev, in_ev))
        self._limbo = keep

    @property
    def reserved_bytes(self) -> int:
        """Host bytes the pool's allocator reserved (pinned: rounded up to powers of two)."""
        return self.pool.reserved_bytes

    # ------------------------------------------------------------------ copies
    def _copy(self, stream: Any, dest: torch.Tensor, src: torch.Tensor) -> EventTicket:
        with self.rt.stream(stream):
            start = self.rt.Event(enable_timing=True)
            end = self.rt.Event(enable_timing=True)
            start.record(stream)
            self.rt.copy(dest, src)
            end.record(stream)
        device, rt = self.device, self.rt
        return EventTicket(dest, start, end, self.clock,
                           lambda: rt.current_stream(device), rt.Event)

    def start_out(self, src: torch.Tensor) -> Ticket:
        compute = self.rt.current_stream(src.device)  # read before the side stream
        buf = self._acquire(src.numel())
        self.out_stream.wait_stream(compute)  # src was written on the compute stream
        ticket = self._copy(self.out_stream, buf, src)
        self.rt.record_stream(src, self.out_stream)  # src's block outlives its copy
        return ticket

    def start_in(self, stored: torch.Tensor, device: torch.device) -> Ticket:
        compute = self.rt.current_stream(device)
        dest = self.rt.empty(stored.numel(), device)  # on the compute stream
        # dest's block may still be in the compute stream's use; and ``stored`` was
        # written by a copy-out whose end the compute stream has waited on
        self.in_stream.wait_stream(compute)
        ticket = self._copy(self.in_stream, dest, stored)
        self.rt.record_stream(dest, self.in_stream)  # a reload dropped early stays whole
        return ticket

    def free(self, stored: torch.Tensor) -> None:
        """The buffer returns to the pool once both side streams are past this point."""
        out_ev, in_ev = self.rt.Event(), self.rt.Event()
        out_ev.record(self.out_stream)
        in_ev.record(self.in_stream)
        self._limbo.append((stored, out_ev, in_ev))
        self._drain()

    def recycle(self, dest: torch.Tensor) -> None:
        """Reloaded device buffers go back to the caching allocator as they die."""

    def go_inline(self) -> None:
        """Copies stay on their side streams after the context closes."""

    def close(self) -> None:
        self.out_stream.synchronize()
        self.in_stream.synchronize()
        self._drain(wait=True)
        self.pool.trim()
