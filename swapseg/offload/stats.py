"""SwapStats: the live counters a swap context yields.

Every pack (one tensor autograd saves) falls into exactly one of three classes, so
``packed == swapped + deduplicated + kept``:

- ``swapped``: the first pack of a storage that the policy moves off the device;
- ``deduplicated``: a later pack of a storage already saved (a view, or the same feature
  map saved by several ops); no bytes move;
- ``kept``: the first pack of a storage that stays on the device (parameters, buffers,
  tensors under ``min_bytes``, excluded scopes, beyond ``n_tensors``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SwapStats", "ScopeStats"]

#: The byte counter that a pack of each class adds to.
_BYTES_OF = {"kept": "kept_bytes", "swapped": "bytes_out"}


@dataclass
class ScopeStats:
    """Counters of one module scope (its qualified name; ``""`` is the root)."""

    packed: int = 0
    swapped: int = 0
    deduplicated: int = 0
    kept: int = 0
    bytes_out: int = 0
    kept_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class SwapStats:
    """Counters of one ``swap_activations`` context, updated while it runs.

    ``peak_device_bytes`` is the maximum, over the context, of the engine's resident
    saved bytes: the sum of ``nbytes`` over unique saved storages (entries) whose
    lifecycle state (``swapseg.offload.lifecycle``) is resident:

    - ``device``: kept entries, from their first pack until the last of their live handles
      has been unpacked in a backward (or autograd frees them, or backward ends);
    - ``leaving``: swapped entries from their first pack until the engine observes that
      the copy-out finished (immediately with a synchronous transport, ``workers=0``);
    - ``returning`` and ``back``: from the moment a copy-in is issued (prefetch or on
      demand) until the last of their live handles has been unpacked in that backward
      (or backward ends).

    The peak is sampled after every change, so an entry reloaded for an unpack counts
    at that unpack. It measures what the engine holds; a tensor the model itself keeps
    alive (a skip connection held in a Python list) occupies memory regardless.
    """

    packed: int = 0
    swapped: int = 0
    deduplicated: int = 0
    kept: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    kept_bytes: int = 0
    storages: int = 0
    """Unique non-parameter storages saved (entries made): swapped + kept ones."""
    device_bytes: int = 0
    """Resident saved bytes now, by the definition above."""
    peak_device_bytes: int = 0
    wait_s: float = 0.0
    """Seconds stalled at unpack waiting for a copy-in (on CUDA: the compute stream's
    stall, from events, added as the copies' events complete and complete at context
    exit), and at pack waiting for the in-flight bound."""
    prefetch_hits: int = 0
    """Unpacks whose copy-in had been issued ahead of use."""
    prefetch_misses: int = 0
    """Unpacks that had to issue their own copy-in."""
    branch_evictions: int = 0
    """swap_branches: storages freed during forward (restored before their next use)."""
    branch_bytes_out: int = 0
    host_reserved_bytes: int = 0
    """cuda tier: most host bytes its pinned pool held reserved during the context, as the
    pinned allocator reserves them (each buffer rounded up to a power of two); 0 on the
    other tiers."""
    backwards: int = 0
    steps: int = 0
    """Forward passes seen (a forward starts with the first pack after a backward)."""
    by_scope: dict[str, ScopeStats] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    """With ``trace=True``: timestamped events (see ``swapseg.offload.timeline``)."""
    t0: float = field(default_factory=time.perf_counter, repr=False)

    def scope(self, name: str) -> ScopeStats:
        s = self.by_scope.get(name)
        if s is None:
            s = self.by_scope[name] = ScopeStats()
        return s

    def count(self, scope: str, kind: str, nbytes: int = 0) -> None:
        """Count one pack, of class ``kind`` (``kept``, ``deduplicated`` or ``swapped``),
        in the totals and in ``scope``'s counters; ``packed`` goes up with every call, so
        ``packed == swapped + deduplicated + kept`` holds by construction. ``nbytes`` goes
        to ``kept_bytes`` for a kept entry and to ``bytes_out`` for a swapped one.
        """
        sc = self.scope(scope)
        self.packed += 1
        sc.packed += 1
        setattr(self, kind, getattr(self, kind) + 1)
        setattr(sc, kind, getattr(sc, kind) + 1)
        if nbytes:
            key = _BYTES_OF[kind]
            setattr(self, key, getattr(self, key) + nbytes)
            setattr(sc, key, getattr(sc, key) + nbytes)

    def add_resident(self, nbytes: int) -> None:
        """Add ``nbytes`` (negative: remove) to the resident bytes; track the peak."""
        self.device_bytes += nbytes
        if self.device_bytes > self.peak_device_bytes:
            self.peak_device_bytes = self.device_bytes

    def reset_peak(self) -> None:
        """Start a new peak window from the current resident bytes."""
        self.peak_device_bytes = self.device_bytes

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (events excluded; see ``events``)."""
        return {
            "packed": self.packed,
            "swapped": self.swapped,
            "deduplicated": self.deduplicated,
            "kept": self.kept,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "kept_bytes": self.kept_bytes,
            "storages": self.storages,
            "device_bytes": self.device_bytes,
            "peak_device_bytes": self.peak_device_bytes,
            "wait_s": round(self.wait_s, 6),
            "prefetch_hits": self.prefetch_hits,
            "prefetch_misses": self.prefetch_misses,
            "branch_evictions": self.branch_evictions,
            "branch_bytes_out": self.branch_bytes_out,
            "host_reserved_bytes": self.host_reserved_bytes,
            "backwards": self.backwards,
            "steps": self.steps,
            "by_scope": {k: v.as_dict() for k, v in sorted(self.by_scope.items())},
        }
