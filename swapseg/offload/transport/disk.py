"""The disk tier: one anonymous file per saved storage, gone with the process however it dies.

Each file is opened with ``O_TMPFILE`` (no name ever exists) where the file system supports
it, and otherwise created with a unique name and unlinked at once. Only the descriptor
keeps it, so the kernel reclaims its space when the descriptor closes: when the entry is
released, when the context closes, or when the process dies, SIGKILL included. The folder
never holds a swap file's name (with the fallback, a zero-byte name lives for the two
system calls between create and unlink).

Where the file system allows it, a file's bulk moves with ``O_DIRECT``: the device reads
and writes the tensor's own memory, with no copy into the page cache and no kernel
writeback afterwards, work that would otherwise run on the cores the training step
computes on. Direct I/O needs block-aligned addresses, so the aligned middle of the
storage goes to the file and its unaligned ends (under a block each) stay in memory; a
read lands directly when the buffer it fills has the same alignment (buffers from the
same allocator do), and through the page cache otherwise. A file system without
``O_DIRECT`` (tmpfs) gets plain buffered I/O.

A full folder (ENOSPC, or EDQUOT) fails the copy with ``DiskFullError``, an ``InputError``
whose one line names the folder and the bytes the write needed; the failed file is closed
at once, so nothing is left behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import tempfile
import threading
from dataclasses import dataclass

import torch

from swapseg.errors import InputError
from swapseg.offload.transport.base import CopyRunner, Ticket
from swapseg.offload.transport.pool import Recycler

__all__ = ["DiskTransport", "DiskFullError", "SwapFile", "open_anonymous", "disk_shortfall",
           "ALIGN", "DIRECT_MIN_BYTES"]

_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Direct I/O's alignment of addresses, offsets and lengths (any logical block divides it).
ALIGN = 4096
#: Smaller storages go through the page cache: a direct write waits for the device, and
#: for a small copy that wait costs more than the cores the kernel's copy would take.
DIRECT_MIN_BYTES = 2**20


class DiskFullError(InputError):
    """The disk tier's folder ran out of space."""


@dataclass(frozen=True)
class SwapFile:
    """A stored copy on disk: an open descriptor of an unnamed file, and its size.

    With direct I/O the file holds the storage's block-aligned middle, and ``head`` and
    ``tail`` its ends; ``shift`` is the source address modulo ``ALIGN`` (-1: the file
    holds every byte, written through the page cache).
    """

    fd: int
    nbytes: int
    head: bytes = b""
    tail: bytes = b""
    shift: int = -1


def _bytes_view(t: torch.Tensor) -> memoryview:
    """A writable view of a contiguous CPU uint8 tensor's bytes.

    Not ``t.numpy()``: sharing with numpy marks the storage as not resizable for good,
    and the storage here is the user's activation (swap_branches resizes it).
    """
    return memoryview((ctypes.c_char * t.numel()).from_address(t.data_ptr())).cast("B")


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the file system refuses it."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return True


def _pwrite_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], done)


def _pread_all(fd: int, view: memoryview, where: str) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], done)
        if got == 0:
            raise OSError(errno.EIO, f"swap file in {where} ended early")
        done += got


def open_anonymous(folder: str) -> int:
    """A read-write descriptor of a new file in ``folder`` that has no name."""
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(folder, flags | os.O_TMPFILE, 0o600)
        except OSError as exc:
            if exc.errno in _FULL:
                raise
            # EOPNOTSUPP/EISDIR/EINVAL: this file system has no O_TMPFILE; use a name
    fd, path = tempfile.mkstemp(prefix="swapseg-", suffix=".swap", dir=folder)
    os.unlink(path)
    return fd


def _full(folder: str, nbytes: int) -> DiskFullError:
    try:
        st = os.statvfs(folder)
        free = f", {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free"
    except OSError:
        free = ""
    return DiskFullError(f"swap folder {folder} is full: a swap file needed {nbytes} bytes "
                         f"({nbytes / 2**20:.1f} MiB){free}; free space there or point "
                         "the disk tier at a larger folder")


class DiskTransport(CopyRunner):
    """One unnamed file per saved storage in ``disk_dir`` (default: the system temp dir)."""

    kind = "disk"

    def __init__(self, disk_dir: str | None = None, workers: int = 1,
                 reuse_buffers: bool = False, direct: bool = True) -> None:
        super().__init__(workers)
        self.direct = direct and hasattr(os, "O_DIRECT")
        """Move each file's bulk with ``O_DIRECT``; turned off for good where the folder's
        file system refuses it."""
        # Off by default: reuse measured no faster here, and buffers of a size no later
        # read needs are held until the context closes (the 256^3 step went past its cap)
        self.dest = Recycler() if reuse_buffers else None
        """Where reads land: reloaded buffers taken back and reused (None: always new)."""
        self.dir = os.path.abspath(disk_dir if disk_dir is not None else tempfile.gettempdir())
        if not os.path.isdir(self.dir):  # never created: a typo would fill another disk
            raise InputError(f"disk_dir {self.dir}: no such directory")
        self._open: set[int] = set()
        self._lock = threading.Lock()

    def _write(self, host: torch.Tensor) -> SwapFile:
        n = host.numel()
        try:
            fd = open_anonymous(self.dir)
        except OSError as exc:
            if exc.errno in _FULL:
                raise _full(self.dir, n) from None
            raise
        try:
            stored = self._fill(fd, host)
        except OSError as exc:
            os.close(fd)  # the kernel frees what was written
            if exc.errno in _FULL:
                raise _full(self.dir, n) from None
            raise
        with self._lock:
            self._open.add(fd)
        return stored

    def _fill(self, fd: int, host: torch.Tensor) -> SwapFile:
        view, n = _bytes_view(host), host.numel()
        head = (-host.data_ptr()) % ALIGN
        body = max(0, n - head) // ALIGN * ALIGN
        if self.direct and n >= DIRECT_MIN_BYTES and _set_direct(fd, True):
            try:
                _pwrite_all(fd, view[head:head + body])
                return SwapFile(fd, n, bytes(view[:head]), bytes(view[head + body:]),
                                host.data_ptr() % ALIGN)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # this file system takes no direct I/O
                _set_direct(fd, False)
        _pwrite_all(fd, view)
        return SwapFile(fd, n)

    def _read(self, stored: SwapFile, host: torch.Tensor) -> None:
        view = _bytes_view(host)
        if stored.shift < 0:
            _pread_all(stored.fd, view, self.dir)
            return
        h, body = len(stored.head), stored.nbytes - len(stored.head) - len(stored.tail)
        if host.data_ptr() % ALIGN != stored.shift:
            _set_direct(stored.fd, False)  # another alignment: through the page cache
        _pread_all(stored.fd, view[h:h + body], self.dir)
        view[:h] = stored.head
        view[h + body:] = stored.tail

    def start_out(self, src: torch.Tensor) -> Ticket:
        host = src if src.device.type == "cpu" else src.to("cpu", non_blocking=False)
        return self.submit(lambda: self._write(host))

    def start_in(self, stored: SwapFile, device: torch.device) -> Ticket:
        if self.dest is not None and device.type == "cpu":
            host = self.dest.get(stored.nbytes)
        else:
            host = torch.empty(stored.nbytes, dtype=torch.uint8)

        def read() -> torch.Tensor:
            self._read(stored, host)
            return host if device.type == "cpu" else host.to(device)
        return self.submit(read)

    def recycle(self, dest: torch.Tensor) -> None:
        if self.dest is not None:
            self.dest.take(dest)

    def free(self, stored: SwapFile) -> None:
        with self._lock:
            if stored.fd not in self._open:
                return
            self._open.discard(stored.fd)
        os.close(stored.fd)

    @property
    def open_files(self) -> int:
        """Swap files this transport holds open now."""
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        super().close()
        if self.dest is not None:
            self.dest.clear()
        with self._lock:
            fds, self._open = self._open, set()
        for fd in fds:
            os.close(fd)


def disk_shortfall(folder: str, nbytes: int) -> int:
    """Bytes by which ``folder``'s free space falls short of ``nbytes`` (0: it fits)."""
    st = os.statvfs(folder)
    return max(0, nbytes - st.f_bavail * st.f_frsize)
