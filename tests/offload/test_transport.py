"""Buffer pool and the CPU transports (host, disk)."""

from __future__ import annotations

import os

import pytest
import torch

from swapseg.errors import InputError
from swapseg.offload.transport import BufferPool, DiskTransport, HostTransport, make_transport


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


@pytest.mark.parametrize("workers", [0, 2])
def test_host_round_trip(workers):
    tr = HostTransport(workers=workers, pool=BufferPool())
    src = torch.arange(1000, dtype=torch.uint8)
    out = tr.start_out(src)
    stored = out.result()
    assert out.done() and torch.equal(stored, src) and stored.data_ptr() != src.data_ptr()
    back = tr.start_in(stored, torch.device("cpu")).result()
    assert torch.equal(back, src) and back.data_ptr() != stored.data_ptr()
    tr.free(stored)
    assert tr.pool.free_bytes == 1000
    tr.close()


def test_disk_round_trip_and_cleanup(tmp_path):
    tr = DiskTransport(str(tmp_path), workers=1)
    src = torch.randint(0, 255, (4097,), dtype=torch.uint8)
    path = tr.start_out(src).result()
    assert os.path.getsize(path) == 4097
    back = tr.start_in(path, torch.device("cpu")).result()
    assert torch.equal(back, src)
    tr.free(path)
    assert not os.path.exists(path)
    tr.close()
    assert os.listdir(tmp_path) == []


def test_make_transport_tiers(tmp_path):
    cpu = torch.device("cpu")
    assert make_transport("auto", cpu).kind == "host"
    assert make_transport("host", cpu).kind == "host"
    d = make_transport("disk", cpu, disk_dir=str(tmp_path))
    assert d.kind == "disk"
    d.close()
    with pytest.raises(InputError, match="cuda"):
        make_transport("cuda", cpu)
