"""Probes of the disk tier's folder: the device's bandwidth, the page cache's, its share.

The disk tier writes with ``pwrite`` into the page cache and the kernel writes back; a
write costs the copying thread a kernel copy into the cache (at the cache's rate, on the
same cores as compute), and past the dirty limit it waits for the device. Reads of data
still cached cost a copy out of the cache; the rest wait for the device too.
"""

from __future__ import annotations

import os
import tempfile
import time

__all__ = ["disk_rates", "page_cache_rates", "page_cache_bytes"]

_CHUNK = 8 * 2**20


def _buffer() -> bytes:
    import numpy as np

    return np.random.default_rng(0).integers(0, 255, _CHUNK, dtype=np.uint8).tobytes()


def disk_rates(nbytes: int = 512 * 2**20, folder: str | None = None
               ) -> tuple[float, float]:
    """(write, read) bytes/s of a file in ``folder``: ``nbytes`` written in 8 MiB
    ``pwrite`` calls and ``fdatasync`` ed (the device's rate, not the page cache's), then
    dropped from the page cache (``posix_fadvise`` DONTNEED) and read back."""
    chunk, buf = _CHUNK, _buffer()
    fd, path = tempfile.mkstemp(prefix="swapseg-probe-", dir=folder)
    os.unlink(path)
    try:
        t0 = time.perf_counter()
        for off in range(0, nbytes, chunk):
            os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        write = nbytes / (time.perf_counter() - t0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        for off in range(0, nbytes, chunk):
            os.pread(fd, chunk, off)
        read = nbytes / (time.perf_counter() - t0)
    finally:
        os.close(fd)
    return write, read


def page_cache_rates(nbytes: int = 512 * 2**20, folder: str | None = None
                     ) -> tuple[float, float]:
    """(write, read) bytes/s of the page cache: ``nbytes`` written in 8 MiB ``pwrite``
    calls with no sync (under the dirty limit, so the kernel copy alone), then read back
    while still cached. What a disk-tier copy costs the cores, apart from waiting."""
    chunk, buf = _CHUNK, _buffer()
    fd, path = tempfile.mkstemp(prefix="swapseg-probe-", dir=folder)
    os.unlink(path)
    try:
        t0 = time.perf_counter()
        for off in range(0, nbytes, chunk):
            os.pwrite(fd, buf, off)
        write = nbytes / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for off in range(0, nbytes, chunk):
            os.pread(fd, chunk, off)
        read = nbytes / (time.perf_counter() - t0)
    finally:
        os.close(fd)
    return write, read


def page_cache_bytes() -> int:
    """Bytes of dirty page cache the kernel lets a writer build before it throttles it:
    ``vm.dirty_ratio`` percent of MemAvailable (a lower bound of its dirtyable memory)."""
    try:
        with open("/proc/sys/vm/dirty_ratio") as fh:
            ratio = int(fh.read().split()[0])
        with open("/proc/meminfo") as fh:
            avail = next(int(ln.split()[1]) * 1024 for ln in fh
                         if ln.startswith("MemAvailable:"))
    except (OSError, ValueError, StopIteration):
        return 0
    return ratio * avail // 100
