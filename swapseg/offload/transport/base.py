"""The Transport protocol, and the ticket every copy hands back.

A transport moves one saved storage, seen as a flat uint8 tensor, off the device
(``start_out``) and back (``start_in``). Both return a ``Ticket`` at once; the engine
decides when to wait. Transports hold no scheduling logic: what to move and when lives
in the engine.

Every ticket carries the times its copy ran (``start_t``, ``end_t``, in
``time.perf_counter`` seconds) and how long its consumer stalled on it (``wait_s``).
On the CPU tiers these are host clock readings taken by the copy job and around
``result()``. Where copies run asynchronously on a device (CUDA), they are known only
once the copy has finished; ``timed()`` says when they are final.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Ticket", "Transport", "CopyRunner"]


class Ticket:
    """A copy in flight. ``result()`` makes its output usable by the caller."""

    def __init__(self, future: Future | None = None, value: Any = None) -> None:
        self._future = future
        self._value = value
        self.start_t: float | None = None
        """When the copy started (perf_counter seconds); set by the copy job."""
        self.end_t: float | None = None
        """When the copy ended."""
        self.wait_s = 0.0
        """Seconds the consumer was blocked in ``result()`` waiting for the copy."""
        self.wait_end_t: float | None = None
        """When the consumer's wait ended (set by ``result()``)."""

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def result(self) -> Any:
        """The copy's output; blocks the host until the copy has finished.

        A failed copy raises its error here (and again on every later call).
        """
        if self._future is not None:
            t0 = time.perf_counter()
            try:
                self._value = self._future.result()
            finally:
                t1 = time.perf_counter()
                self.wait_s += t1 - t0
                self.wait_end_t = t1
            self._future = None
        return self._value

    def sync(self) -> None:
        """Block the host until the copy has finished (errors surface in ``result``)."""
        if self._future is not None:
            self._future.exception()

    def timed(self) -> bool:
        """True once ``start_t``, ``end_t`` and ``wait_s`` are final."""
        return self.done()

    def forget(self) -> None:
        """Drop the output (the consumer holds it now); the timing stays readable."""
        self._value = None
        self._keep = None


@runtime_checkable
class Transport(Protocol):
    """Where swapped bytes go. One instance per engine and device type."""

    kind: str

    def start_out(self, src: torch.Tensor) -> Ticket:
        """Copy the flat uint8 ``src`` off the device; the ticket's result is the stored copy.

        ``src`` must stay alive and unmodified until the ticket is done.
        """
        ...

    def start_in(self, stored: Any, device: torch.device) -> Ticket:
        """Copy a stored copy back to ``device``; the result is a flat uint8 tensor there."""
        ...

    def free(self, stored: Any) -> None:
        """The stored copy is no longer needed (its buffer or file goes back)."""
        ...

    def recycle(self, dest: torch.Tensor) -> None:
        """A reloaded device buffer the engine no longer holds (may be reused, or not)."""
        ...

    def go_inline(self) -> None:
        """Finish queued copies; later ones may run inline (the context has closed)."""
        ...

    def close(self) -> None:
        """Finish everything; release what the transport owns."""
        ...


def _timed(ticket: Ticket, fn: Callable[[], Any]) -> Callable[[], Any]:
    def job() -> Any:
        ticket.start_t = time.perf_counter()
        try:
            return fn()
        finally:
            ticket.end_t = time.perf_counter()
    return job


class CopyRunner:
    """Runs copy jobs on a thread pool, or inline with ``workers=0`` (deterministic tests)."""

    def __init__(self, workers: int) -> None:
        self._ex = ThreadPoolExecutor(workers, thread_name_prefix="swapseg") if workers else None

    def submit(self, fn: Callable[[], Any]) -> Ticket:
        ticket = Ticket()
        job = _timed(ticket, fn)
        if self._ex is None:
            future: Future = Future()
            try:
                future.set_result(job())
            except Exception as exc:  # noqa: BLE001 - surfaces at result(), as threaded
                future.set_exception(exc)
            ticket._future = future
        else:
            ticket._future = self._ex.submit(job)
        return ticket

    def recycle(self, dest: torch.Tensor) -> None:
        """Reloaded buffers are not reused by default."""

    def go_inline(self) -> None:
        """Finish queued jobs, then run later ones inline (no thread outlives its context)."""
        if self._ex is not None:
            self._ex.shutdown(wait=True)
            self._ex = None

    def close(self) -> None:
        self.go_inline()
