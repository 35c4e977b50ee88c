"""The disk tier: one anonymous file per saved storage, gone with the process however it dies.

Each file is opened with ``O_TMPFILE`` (no name ever exists) where the file system supports
it, and otherwise created with a unique name and unlinked at once. Only the descriptor
keeps it, so the kernel reclaims its space when the descriptor closes: when the entry is
released, when the context closes, or when the process dies, SIGKILL included. The folder
never holds a swap file's name (with the fallback, a zero-byte name lives for the two
system calls between create and unlink).

A full folder (ENOSPC, or EDQUOT) fails the copy with ``DiskFullError``, an ``InputError``
whose one line names the folder and the bytes the write needed; the failed file is closed
at once, so nothing is left behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import threading
from dataclasses import dataclass

import torch

from swapseg.errors import InputError
from swapseg.offload.transport.base import CopyRunner, Ticket
from swapseg.offload.transport.pool import Recycler

__all__ = ["DiskTransport", "DiskFullError", "SwapFile", "open_anonymous", "disk_shortfall"]

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(InputError):
    """The disk tier's folder ran out of space."""


@dataclass(frozen=True)
class SwapFile:
    """A stored copy on disk: an open descriptor of an unnamed file, and its size."""

    fd: int
    nbytes: int


def _bytes_view(t: torch.Tensor) -> memoryview:
    """A writable view of a contiguous CPU uint8 tensor's bytes.

    Not ``t.numpy()``: sharing with numpy marks the storage as not resizable for good,
    and the storage here is the user's activation (swap_branches resizes it).
    """
    return memoryview((ctypes.c_char * t.numel()).from_address(t.data_ptr())).cast("B")


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
                 reuse_buffers: bool = True) -> None:
        super().__init__(workers)
        self.dest = Recycler() if reuse_buffers else None
        """Where reads land: reloaded buffers taken back and reused (None: always new)."""
        self.dir = os.path.abspath(disk_dir if disk_dir is not None else tempfile.gettempdir())
        os.makedirs(self.dir, exist_ok=True)
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
            self._fill(fd, host)
        except OSError as exc:
            os.close(fd)  # the kernel frees what was written
            if exc.errno in _FULL:
                raise _full(self.dir, n) from None
            raise
        with self._lock:
            self._open.add(fd)
        return SwapFile(fd, n)

    @staticmethod
    def _fill(fd: int, host: torch.Tensor) -> None:
        view, done = _bytes_view(host), 0
        while done < host.numel():
            done += os.pwrite(fd, view[done:], done)

    def start_out(self, src: torch.Tensor) -> Ticket:
        host = src if src.device.type == "cpu" else src.to("cpu", non_blocking=False)
        return self.submit(lambda: self._write(host))

    def start_in(self, stored: SwapFile, device: torch.device) -> Ticket:
        if self.dest is not None and device.type == "cpu":
            host = self.dest.get(stored.nbytes)
        else:
            host = torch.empty(stored.nbytes, dtype=torch.uint8)

        def read() -> torch.Tensor:
            view, done = _bytes_view(host), 0
            while done < stored.nbytes:
                got = os.preadv(stored.fd, [view[done:]], done)
                if got == 0:
                    raise OSError(errno.EIO, f"swap file in {self.dir} ended early")
                done += got
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
