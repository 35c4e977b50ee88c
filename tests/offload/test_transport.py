"""Buffer pool and its bound, the CPU transports (host, disk), ticket timings, CUDA timing
bookkeeping (with fake events)."""

from __future__ import annotations

import errno
import os
import time

import pytest
import torch

from swapseg.errors import InputError
from swapseg.offload.transport import (
    BufferPool,
    CopyRunner,
    CudaTransport,
    DiskFullError,
    DiskTransport,
    HostTransport,
    Transport,
    make_transport,
)
from swapseg.offload.transport import disk as disk_mod
from swapseg.offload.transport.cuda import EventClock, EventTicket

CPU = torch.device("cpu")


def test_pool_reuses_exact_sizes():
    pool = BufferPool()
    a = pool.acquire(1000)
    pool.release(a)
    b = pool.acquire(1000)
    assert b.data_ptr() == a.data_ptr()
    c = pool.acquire(999)
    assert pool.allocated_bytes == 1999 and pool.allocations == 2
    pool.release(b)
    pool.release(c)
    assert pool.free_bytes == 1999
    pool.clear()
    assert pool.allocated_bytes == 0 and pool.free_bytes == 0


def test_pool_trim_keeps_the_last_window_high_water_mark():
    pool = BufferPool()
    # window 1: three 100-byte buffers at once, one 50-byte one
    bufs = [pool.acquire(100) for _ in range(3)] + [pool.acquire(50)]
    for b in bufs:
        pool.release(b)
    assert pool.trim() == 0 and pool.allocated_bytes == 350  # all of it was in use at once
    # window 2: only one 100-byte buffer in use at a time, no 50-byte one
    for _ in range(4):
        pool.release(pool.acquire(100))
    assert pool.allocations == 4
    assert pool.trim() == 250  # two 100-byte buffers and the 50-byte one go
    assert pool.allocated_bytes == pool.free_bytes == 100
    # a buffer in use during trim is never freed, and counts in the next window
    held = pool.acquire(100)
    assert pool.trim() == 0 and pool.allocated_bytes == 100
    pool.release(held)
    assert pool.trim() == 0 and pool.free_bytes == 100
    # a window that acquired nothing (an engine's close after its last step's trim) keeps
    assert pool.trim() == 0 and pool.allocated_bytes == 100
    for _ in range(2):  # a window that used 50-byte buffers only: the 100-byte one goes
        pool.release(pool.acquire(50))
    assert pool.trim() == 100 and pool.allocated_bytes == 50


def test_host_transport_close_trims_its_pool():
    pool = BufferPool()
    tr = HostTransport(workers=0, pool=pool)
    pool.release(pool.acquire(4096))  # stale: from an earlier context
    pool.trim()
    stored = tr.start_out(torch.zeros(10, dtype=torch.uint8)).result()
    tr.free(stored)
    tr.close()
    assert pool.allocated_bytes == 10  # the stale 4096-byte buffer is gone


@pytest.mark.parametrize("workers", [0, 2])
def test_host_round_trip_and_ticket_times(workers):
    tr = HostTransport(workers=workers, pool=BufferPool())
    assert isinstance(tr, Transport)
    src = torch.arange(1000, dtype=torch.uint8)
    t_before = time.perf_counter()
    out = tr.start_out(src)
    stored = out.result()
    assert out.done() and out.timed()
    assert t_before <= out.start_t <= out.end_t <= time.perf_counter()
    assert out.wait_s >= 0 and out.wait_end_t >= out.end_t - 1e-3
    assert torch.equal(stored, src) and stored.data_ptr() != src.data_ptr()
    back = tr.start_in(stored, CPU).result()
    assert torch.equal(back, src) and back.data_ptr() != stored.data_ptr()
    tr.free(stored)
    assert tr.pool.free_bytes == 1000
    tr.close()


def test_a_failed_copy_raises_at_result_inline_and_threaded():
    for workers in (0, 1):
        runner = CopyRunner(workers)
        ticket = runner.submit(lambda: 1 / 0)
        ticket.sync()
        assert ticket.done() and ticket.end_t is not None
        with pytest.raises(ZeroDivisionError):
            ticket.result()
        runner.close()


def _fds_in(folder) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder) + "/"):
                out.append(fd)
        except OSError:
            pass
    return out


@pytest.mark.parametrize("tmpfile", [True, False])
def test_disk_files_have_no_names(tmp_path, monkeypatch, tmpfile):
    if not tmpfile:  # a file system without O_TMPFILE: create, then unlink at once
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    tr = DiskTransport(str(tmp_path), workers=1)
    src = torch.randint(0, 255, (4097,), dtype=torch.uint8)
    stored = tr.start_out(src).result()
    assert os.fstat(stored.fd).st_size == 4097 and stored.nbytes == 4097
    assert os.listdir(tmp_path) == [] and len(_fds_in(tmp_path)) == 1
    back = tr.start_in(stored, CPU).result()
    assert torch.equal(back, src)
    tr.free(stored)
    assert _fds_in(tmp_path) == [] and tr.open_files == 0
    tr.start_out(src).result()  # still open at close: close closes it
    tr.close()
    assert os.listdir(tmp_path) == [] and _fds_in(tmp_path) == []


def test_disk_full_is_one_line_naming_folder_and_bytes(tmp_path, monkeypatch):
    tr = DiskTransport(str(tmp_path), workers=1)

    def full(fd, data, offset):
        os.write(fd, bytes(data[:100]))  # some bytes land before the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_mod.os, "pwrite", full)
    ticket = tr.start_out(torch.zeros(5000, dtype=torch.uint8))
    with pytest.raises(DiskFullError) as info:
        ticket.result()
    msg = str(info.value)
    assert isinstance(info.value, InputError) and len(msg.splitlines()) == 1
    assert str(tmp_path) in msg and "5000 bytes" in msg
    assert _fds_in(tmp_path) == [] and tr.open_files == 0 and os.listdir(tmp_path) == []
    tr.close()


def test_make_transport_tiers(tmp_path):
    auto = make_transport("auto", CPU)  # what frees a CPU's memory: concrete_tier
    assert auto.kind == "disk"
    auto.close()
    assert make_transport("host", CPU).kind == "host"
    d = make_transport("disk", CPU, disk_dir=str(tmp_path))
    assert d.kind == "disk"
    d.close()
    with pytest.raises(InputError, match="cuda"):
        make_transport("cuda", CPU)
    assert isinstance(d, Transport) and issubclass(CudaTransport, object)


class _FakeEvent:
    """A CUDA event stand-in: ``now`` is the fake device clock in ms."""

    now = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        self.t: float | None = None
        self.complete = False

    def record(self, stream=None) -> None:
        self.t = _FakeEvent.now

    def query(self) -> bool:
        return self.complete

    def synchronize(self) -> None:
        self.complete = True

    def elapsed_time(self, other: _FakeEvent) -> float:
        assert self.complete and other.complete, "elapsed_time needs completed events"
        return other.t - self.t


class _FakeStream:
    def __init__(self) -> None:
        self.waited: list[_FakeEvent] = []

    def wait_event(self, ev: _FakeEvent) -> None:
        self.waited.append(ev)


def _at(ms: float) -> _FakeEvent:
    _FakeEvent.now = ms
    ev = _FakeEvent()
    ev.record()
    return ev


@pytest.mark.parametrize("ready_ms, stall_ms", [(12.0, 8.0), (25.0, 0.0)])
def test_event_ticket_times_come_from_events(ready_ms, stall_ms):
    """Copy from 10 to 20 ms on the device; the consumer needs it at ``ready_ms``."""
    anchor = _at(0.0)
    anchor.synchronize()
    clock = EventClock(anchor, host_t=100.0)
    start, end = _at(10.0), _at(20.0)
    compute = _FakeStream()
    ticket = EventTicket("value", start, end, clock, lambda: compute, _FakeEvent)
    assert not ticket.done() and not ticket.timed() and ticket.start_t is None
    _FakeEvent.now = ready_ms
    assert ticket.result() == "value" and compute.waited == [end]  # the host did not block
    start.complete = end.complete = True
    assert ticket.done() and not ticket.timed()  # the consumer has not reached its point
    ticket.sync()
    assert ticket.timed()
    assert ticket.start_t == pytest.approx(100.010) and ticket.end_t == pytest.approx(100.020)
    assert ticket.wait_s == pytest.approx(stall_ms / 1e3)
    ticket.forget()
    assert ticket.end_t == pytest.approx(100.020)  # timing survives dropping the tensors


def test_disk_shortfall_against_a_tmpfs(tmp_path):
    from _tmpfs import tiny_tmpfs

    with tiny_tmpfs(tmp_path / "tiny", "1m") as tiny:
        free = os.statvfs(tiny).f_bavail * os.statvfs(tiny).f_frsize
        assert 0 < free <= 2**20
        assert disk_mod.disk_shortfall(str(tiny), free) == 0
        assert disk_mod.disk_shortfall(str(tiny), free + 12345) == 12345


@pytest.mark.parametrize("reuse", [True, False])
def test_disk_reads_land_in_taken_back_buffers_once_nobody_holds_them(tmp_path, reuse):
    tr = DiskTransport(str(tmp_path), workers=0, reuse_buffers=reuse)
    a = torch.arange(5000, dtype=torch.int32)
    sa = tr.start_out(a.view(torch.uint8)).result()  # (20000,) bytes
    ptrs = []
    for _ in range(2):  # two reloads: the activations they became are still held
        buf = tr.start_in(sa, CPU).result()
        ptrs.append(buf.data_ptr())
        tr.recycle(buf)
        if len(ptrs) == 1:
            held = buf.view(torch.int32)  # as autograd holds an unpacked activation
        del buf
    assert ptrs[0] != ptrs[1]  # the first buffer was still held
    third = tr.start_in(sa, CPU).result()
    assert torch.equal(third.view(torch.int32), a) and torch.equal(held, a)
    if reuse:
        assert tr.dest is not None and tr.dest.reused == 1
        assert third.data_ptr() == ptrs[1]  # the free one, not the held one
    else:
        assert tr.dest is None
    tr.close()


def _direct_io_works(folder) -> bool:
    import mmap
    try:
        fd = os.open(folder, os.O_RDWR | os.O_TMPFILE | os.O_DIRECT, 0o600)
    except (OSError, AttributeError):
        return False
    try:
        os.pwrite(fd, mmap.mmap(-1, disk_mod.ALIGN), 0)  # page-aligned by construction
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _unaligned(nbytes: int) -> torch.Tensor:
    """A storage-sized uint8 tensor at an address 100 bytes past a block boundary."""
    gen = torch.Generator().manual_seed(5)
    big = torch.randint(0, 255, (nbytes + 2 * disk_mod.ALIGN,), dtype=torch.uint8,
                        generator=gen)
    start = (100 - big.data_ptr()) % disk_mod.ALIGN
    return big[start:start + nbytes]


def test_direct_io_moves_the_aligned_middle_and_keeps_the_ends(tmp_path):
    if not _direct_io_works(str(tmp_path)):
        pytest.skip(f"{tmp_path}'s file system takes no O_DIRECT")
    import fcntl
    n = disk_mod.DIRECT_MIN_BYTES + 3 * disk_mod.ALIGN + 7
    src = _unaligned(n)
    tr = DiskTransport(str(tmp_path), workers=0)
    stored = tr.start_out(src).result()
    head = disk_mod.ALIGN - 100
    assert stored.shift == 100 and len(stored.head) == head
    assert len(stored.tail) == (n - head) % disk_mod.ALIGN == 7 + 100
    assert os.fstat(stored.fd).st_size == n - head - len(stored.tail)
    assert fcntl.fcntl(stored.fd, fcntl.F_GETFL) & os.O_DIRECT
    back = tr.start_in(stored, CPU).result()  # whatever its alignment: same bytes
    assert torch.equal(back, src)
    same = torch.empty(n + 2 * disk_mod.ALIGN, dtype=torch.uint8)
    off = (100 - same.data_ptr()) % disk_mod.ALIGN
    tr._read(stored, same[off:off + n])  # the same alignment: the direct path
    assert torch.equal(same[off:off + n], src)
    small = tr.start_out(src[:1000].clone()).result()  # under DIRECT_MIN_BYTES: buffered
    assert small.shift == -1 and os.fstat(small.fd).st_size == 1000
    tr.close()


def test_a_file_system_refusing_direct_io_gets_buffered_io(tmp_path, monkeypatch):
    real = disk_mod._pwrite_all
    import fcntl

    def refuse_direct(fd, view):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view)
    monkeypatch.setattr(disk_mod, "_pwrite_all", refuse_direct)
    src = _unaligned(disk_mod.DIRECT_MIN_BYTES + 5)
    tr = DiskTransport(str(tmp_path), workers=0)
    stored = tr.start_out(src).result()
    assert not tr.direct and stored.shift == -1
    assert os.fstat(stored.fd).st_size == src.numel()
    assert torch.equal(tr.start_in(stored, CPU).result(), src)
    tr.close()
