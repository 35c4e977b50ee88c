"""The cuda tier: pinned host buffers, a side stream per direction, events; nothing else.

Each copy is bracketed by two timing events on its side stream, so its ticket knows
when the copy really ran on the device, not when the host queued it. At ``result()``
the consumer's stream waits on the end event and a third event is recorded on that
stream just before: how long the consumer stalled is ``end - ready`` when positive, the
real stall of the compute stream (the host itself does not block). Device times become
host ``perf_counter`` seconds through one anchor: an event recorded, synchronized and
read against the host clock when the transport is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from swapseg.offload.transport.base import Ticket
from swapseg.offload.transport.pool import BufferPool, get_pool

__all__ = ["CudaTransport", "EventTicket", "EventClock"]


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
                 consumer: Callable[[], Any], event_cls: Any, keep: Any = None) -> None:
        super().__init__(None, value)
        self._start, self._end, self._clock = start, end, clock
        self._consumer, self._event_cls = consumer, event_cls
        self._ready: Any = None
        self._keep = keep  # the source stays alive until the copy has finished

    def done(self) -> bool:
        if self._end.query():
            self._keep = None
            return True
        return False

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
        self._keep = None

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
    """Pinned host buffers, a side stream per direction, timing events."""

    kind = "cuda"

    def __init__(self, device: torch.device, pool: BufferPool | None = None) -> None:
        self.device = device
        self.pool = pool if pool is not None else get_pool(True)
        self.out_stream = torch.cuda.Stream(device)
        self.in_stream = torch.cuda.Stream(device)
        self.clock = EventClock.start(self.out_stream, torch.cuda.Event)

    def _copy(self, stream: Any, dest: torch.Tensor, src: torch.Tensor, keep: Any
              ) -> EventTicket:
        with torch.cuda.stream(stream):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            dest.copy_(src, non_blocking=True)
            end.record(stream)
        device = self.device
        return EventTicket(dest, start, end, self.clock,
                           lambda: torch.cuda.current_stream(device), torch.cuda.Event, keep)

    def start_out(self, src: torch.Tensor) -> Ticket:
        compute = torch.cuda.current_stream(src.device)  # read before the side stream
        buf = self.pool.acquire(src.numel())
        self.out_stream.wait_stream(compute)
        return self._copy(self.out_stream, buf, src, keep=src)

    def start_in(self, stored: torch.Tensor, device: torch.device) -> Ticket:
        compute = torch.cuda.current_stream(device)
        dest = torch.empty(stored.numel(), dtype=torch.uint8, device=device)  # compute stream
        self.in_stream.wait_stream(compute)
        return self._copy(self.in_stream, dest, stored, keep=stored)

    def free(self, stored: torch.Tensor) -> None:
        self.pool.release(stored)

    def recycle(self, dest: torch.Tensor) -> None:
        """Reloaded device buffers go back to the caching allocator as they die."""

    def go_inline(self) -> None:
        """Copies stay on their side streams after the context closes."""

    def close(self) -> None:
        self.out_stream.synchronize()
        self.in_stream.synchronize()
        self.pool.trim()
