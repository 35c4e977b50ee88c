"""Engine events (``trace=True``) and the copy timings that tickets report.

A consumed ticket's times are final at once on the CPU tiers and once its events have
completed on CUDA; until then it waits here, holding no tensor. Its stall (``wait_s``)
goes to ``SwapStats.wait_s`` when final, so on CUDA ``wait_s`` trails the copies still in
flight and is complete when the step ends.
Copy events (``out_start``/``out_end``, ``in_start``/``in_end``, ``wait``) carry the
copy's own times and step, and no ``resident_bytes``: they may be recorded after the
fact, when the resident count has moved on.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from swapseg.offload.lifecycle import Entry
from swapseg.offload.stats import SwapStats
from swapseg.offload.transport import Ticket

__all__ = ["EventLog"]

#: Stalls shorter than this get no ``wait`` event (they still count in ``wait_s``).
MIN_WAIT_EVENT_S = 1e-4


class EventLog:
    """Appends events to ``stats.events`` when tracing; settles copy timings always."""

    def __init__(self, stats: SwapStats, trace: bool) -> None:
        self.stats = stats
        self.trace = trace
        self._untimed: list[tuple[str, dict[str, Any], int, Ticket, bool]] = []

    @staticmethod
    def _tag(e: Entry) -> dict[str, Any]:
        return {"id": e.id, "index": e.index, "bytes": e.nbytes, "scope": e.scope}

    def emit(self, kind: str, e: Entry | None = None, **extra: Any) -> None:
        if not self.trace:
            return
        st = self.stats
        ev: dict[str, Any] = {"t": time.perf_counter() - st.t0, "kind": kind,
                              "step": st.forwards, "resident_bytes": st.saved_bytes}
        if e is not None:
            ev.update(self._tag(e))
        ev.update(extra)
        st.events.append(ev)

    def copied(self, direction: Literal["out", "in"], e: Entry, ticket: Ticket,
               stall: bool) -> None:
        """``ticket`` was consumed; ``stall``: its wait counts in ``wait_s``."""
        ticket.forget()
        if ticket.timed() and not self.trace:  # the common case: nothing to keep
            if stall:
                self.stats.wait_s += ticket.wait_s
            return
        item = (direction, self._tag(e), self.stats.forwards, ticket, stall)
        if ticket.timed():
            self._settle(*item)
        else:
            self._untimed.append(item)

    def collect(self, block: bool = False) -> None:
        """Settle the tickets whose times are final (all of them with ``block``)."""
        pending = []
        for item in self._untimed:
            ticket = item[3]
            if block and not ticket.timed():
                ticket.sync()
            if ticket.timed():
                self._settle(*item)
            else:
                pending.append(item)
        self._untimed = pending

    def _settle(self, direction: str, tag: dict[str, Any], step: int, ticket: Ticket,
                stall: bool) -> None:
        if stall:
            self.stats.wait_s += ticket.wait_s
        if not self.trace:
            return
        t0 = self.stats.t0
        for kind, t in ((f"{direction}_start", ticket.start_t), (f"{direction}_end", ticket.end_t)):
            if t is not None:
                self.stats.events.append({"t": t - t0, "kind": kind, "step": step, **tag})
        if stall and ticket.wait_s > MIN_WAIT_EVENT_S and ticket.wait_end_t is not None:
            self.stats.events.append({"t": ticket.wait_end_t - t0, "kind": "wait", "step": step,
                                      "dur_s": ticket.wait_s, **tag})
