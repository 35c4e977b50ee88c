"""Host buffers reused across steps, and the bound on what a pool keeps.

Fresh host buffers pay a page fault per 4 KiB on first touch (and pinned ones a
``cudaHostAlloc``), so buffers are handed out by exact size and taken back, never freed
inside a step. The bound: ``trim()``, called when a swap context closes, keeps at most
as many free buffers of each size as were in use at once since the previous trim (the
last context's high-water mark per size) and frees the rest. A run whose shapes do not
change keeps exactly what its next context needs; one whose shapes change (volumes of
different sizes) does not accumulate buffers of sizes it stopped using.

What a buffer costs is counted twice: ``allocated_bytes`` in tensor bytes, and
``reserved_bytes`` as the allocator reserves it. PyTorch's pinned host allocator rounds
every allocation up to a power of two, so a pool of pinned buffers reserves up to twice
its tensor bytes; a host budget must use ``reserved_bytes``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

__all__ = ["BufferPool", "Recycler", "get_pool", "clear_pools", "HostAlloc"]

#: Makes a new host buffer: ``alloc(nbytes) -> (buffer, bytes the allocator reserved)``.
HostAlloc = Callable[[int], "tuple[torch.Tensor, int]"]


class BufferPool:
    """Host buffers (uint8, exact sizes) handed out and taken back."""

    def __init__(self, pin_memory: bool = False) -> None:
        self.pin_memory = pin_memory
        self._free: dict[int, list[torch.Tensor]] = {}
        self._in_use: dict[int, int] = {}
        self._peak: dict[int, int] = {}   # per size: most in use at once since the last trim
        self._lock = threading.Lock()
        self.allocated_bytes = 0
        """Bytes of all buffers this pool allocated and still owns (free or in use)."""
        self.allocations = 0
        """Buffers allocated over the pool's life."""
        self.reserved_bytes = 0
        """What the allocator reserved for the buffers this pool owns (pinned: rounded up)."""
        self._reserved: dict[int, int] = {}  # data_ptr -> reserved bytes of that buffer

    def acquire(self, nbytes: int, alloc: HostAlloc | None = None) -> torch.Tensor:
        """A buffer of ``nbytes``: a free one, or a new one from ``alloc`` (default: a
        plain ``torch.empty``, pinned if the pool is, counted at its tensor bytes)."""
        with self._lock:
            n = self._in_use[nbytes] = self._in_use.get(nbytes, 0) + 1
            self._peak[nbytes] = max(self._peak.get(nbytes, 0), n)
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        if alloc is None:
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin_memory)
            reserved = nbytes
        else:
            buf, reserved = alloc(nbytes)
        with self._lock:
            self.allocated_bytes += nbytes
            self.allocations += 1
            self.reserved_bytes += reserved
            self._reserved[buf.data_ptr()] = reserved
        return buf

    def _drop(self, bufs: list[torch.Tensor]) -> None:
        """Forget buffers being freed (under the lock)."""
        for b in bufs:
            self.allocated_bytes -= b.numel()
            self.reserved_bytes -= self._reserved.pop(b.data_ptr(), b.numel())

    def release(self, buf: torch.Tensor) -> None:
        n = buf.numel()
        with self._lock:
            self._in_use[n] = max(0, self._in_use.get(n, 0) - 1)
            self._free.setdefault(n, []).append(buf)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(n * len(v) for n, v in self._free.items())

    def trim(self) -> int:
        """Free the buffers beyond the per-size high-water mark since the last trim.

        Starts a new window from the buffers in use now. Returns the bytes freed.
        """
        freed = 0
        with self._lock:
            for n, bufs in list(self._free.items()):
                keep = max(0, self._peak.get(n, 0) - self._in_use.get(n, 0))
                drop = len(bufs) - keep
                if drop > 0:
                    self._drop(bufs[keep:])
                    del bufs[keep:]
                    freed += n * drop
                if not bufs:
                    del self._free[n]
            self._peak = {n: c for n, c in self._in_use.items() if c}
        return freed

    def clear(self) -> None:
        """Drop the free buffers (buffers in use stay owned by their holders)."""
        with self._lock:
            for bufs in self._free.values():
                self._drop(bufs)
            self._free.clear()


class Recycler:
    """Reloaded CPU storages taken back from the engine and reused for later reloads.

    A reload lands in a fresh buffer that the step then reads, so without reuse every
    reload page-faults its buffer in again (glibc hands large freed blocks back to the
    kernel). A taken-back buffer is reused only once nothing else references it: autograd
    or the user may still hold the activation it became. What it keeps lives until
    ``clear()``, when the transport closes.
    """

    def __init__(self) -> None:
        self._free: dict[int, list[torch.Tensor]] = {}
        self._limbo: list[torch.Tensor] = []
        self.reused = 0
        """Buffers handed out again instead of allocated."""

    def take(self, buf: torch.Tensor) -> None:
        if buf.device.type == "cpu":
            self._limbo.append(buf)

    def get(self, nbytes: int) -> torch.Tensor:
        """A CPU uint8 buffer of ``nbytes``: a taken-back one that nobody holds, or new."""
        if not self._free.get(nbytes) and self._limbo:
            keep = []
            for t in self._limbo:
                # 2 = the buffer itself + the temporary storage object of this call
                if torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2:
                    self._free.setdefault(t.numel(), []).append(t)
                else:
                    keep.append(t)
            self._limbo = keep
        free = self._free.get(nbytes)
        if free:
            self.reused += 1
            return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8)

    def clear(self) -> None:
        self._free.clear()
        self._limbo.clear()


_POOLS: dict[bool, BufferPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(pin_memory: bool = False) -> BufferPool:
    """The process-wide pool (pinned or pageable), shared by all swap contexts."""
    with _POOLS_LOCK:
        pool = _POOLS.get(pin_memory)
        if pool is None:
            pool = _POOLS[pin_memory] = BufferPool(pin_memory)
        return pool


def clear_pools() -> None:
    """Give the free host buffers of all pools back to the allocator."""
    for pool in list(_POOLS.values()):
        pool.clear()
