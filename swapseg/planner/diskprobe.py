"""Probes of the disk tier's folder: the device's bandwidth, the tier's own rates and CPU
cost, the page cache's share.

With buffered I/O the disk tier writes into the page cache and the kernel writes back: a
write costs the copying thread a kernel copy into the cache (on the cores compute runs
on), and past the dirty limit it waits for the device; reads of data still cached cost a
copy out of it. With direct I/O the device moves the bytes: a copy costs the cores little
and always waits for the device.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from swapseg.offload.transport import DiskTransport

__all__ = ["disk_rates", "tier_rates", "page_cache_bytes"]

_CHUNK = 8 * 2**20


def _buffer() -> bytes:
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


def tier_rates(nbytes: int = 512 * 2**20, folder: str | None = None) -> dict[str, Any]:
    """What the disk tier itself achieves in ``folder``: ``nbytes`` written and read back
    by its transport, inline. Returns ``write`` and ``read`` (bytes/s of wall time),
    ``write_cpu`` and ``read_cpu`` (bytes per second of the thread's CPU time, what a
    copy takes from the cores) and ``direct`` (whether the transport used direct I/O).
    The kernel's writeback of buffered writes runs in its own threads, uncounted here."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(0))
    tr = DiskTransport(folder, workers=0)
    try:
        w0, c0 = time.perf_counter(), time.thread_time()
        stored = tr.start_out(src).result()
        w1, c1 = time.perf_counter(), time.thread_time()
        tr.start_in(stored, torch.device("cpu")).result()
        w2, c2 = time.perf_counter(), time.thread_time()
        direct = stored.shift >= 0
    finally:
        tr.close()
    return {"write": nbytes / (w1 - w0), "read": nbytes / (w2 - w1),
            "write_cpu": nbytes / max(c1 - c0, 1e-9), "read_cpu": nbytes / max(c2 - c1, 1e-9),
            "direct": direct}


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
