"""The order backward unpacks saved storages: recorded in one step, prefetched by in the next.

For a static graph the unpack order is deterministic, so the order seen in step k is
the plan of step k+1 (TFLMS's ``lb`` lookahead over it). A step whose entry count
differs from the recorded one (a different graph) falls back to reverse forward order,
which is what backward does for a chain.
"""

from __future__ import annotations

__all__ = ["PrefetchSchedule"]


class PrefetchSchedule:
    """Positions of entries (forward indices) in the expected unpack order."""

    def __init__(self, lookahead: int) -> None:
        self.lookahead = lookahead
        self._order: list[int] | None = None   # unpack order of the previous backward
        self._order_n = -1                     # entry count of the step it was recorded in
        self._plan: list[int] = []
        self._pos: dict[int, int] = {}
        self._seen: list[int] = []

    def begin(self, n: int) -> list[int]:
        """A backward over ``n`` entries starts; returns the first window to prefetch."""
        if self._order is not None and self._order_n == n:
            self._plan = self._order
        else:
            self._plan = list(range(n - 1, -1, -1))
        self._pos = {idx: pos for pos, idx in enumerate(self._plan)}
        self._seen = []
        return self._plan[:self.lookahead]

    def unpacked(self, index: int) -> list[int]:
        """Entry ``index`` is unpacked for the first time; returns the next window."""
        self._seen.append(index)
        pos = self._pos.get(index)
        return [] if pos is None else self._plan[pos + 1:pos + 1 + self.lookahead]

    def end(self, n: int) -> None:
        """The backward ended: what it unpacked is the next step's plan."""
        if self._seen:
            self._order, self._order_n = self._seen, n
