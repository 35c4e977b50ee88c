"""The cuda transport's stream protocol, run on CPU under the runtime double.

One test per race class that comparable tools shipped (issue 22), at the transport's
own interface. The mutation check, run on 2026-12-07 (each call replaced by ``pass`` in
turn, then this module and test_cuda_training.py run; "training" = that module):

- ``out_stream.wait_stream(compute)`` in ``start_out``: 31 of 32 fail, among them
  ``test_round_trip_and_pool_reuse``, ``test_source_freed_while_its_copy_is_in_flight``,
  ``test_inline_reload_racing_its_own_copy_out`` and every training test;
- ``in_stream.wait_stream(compute)`` in ``start_in``: 26 fail, among them
  ``test_round_trip_and_pool_reuse``, ``test_inline_reload_racing_its_own_copy_out``,
  ``test_reload_landing_in_a_block_freed_mid_backward`` and the bitwise training tests;
- ``stream.wait_event(self._end)`` in ``EventTicket.result``: 24 fail, among them
  ``test_inline_reload_racing_its_own_copy_out``, ``test_round_trip_and_pool_reuse``,
  ``test_poison_shows_a_reload_read_without_the_protocol`` and the bitwise training tests;
- ``record_stream(src, out_stream)`` in ``start_out``:
  ``test_source_freed_while_its_copy_is_in_flight`` (its 3 seeds);
- ``record_stream(dest, in_stream)`` in ``start_in``:
  ``test_reload_landing_in_a_block_freed_mid_backward`` (its 3 seeds).

The engine itself keeps sources alive until their copy is seen done and syncs a reload
before dropping it, so only the transport-level tests catch the two ``record_stream``
deletions; they are what keeps the transport safe under a caller that lets go early.
The double raises ``Race`` where the protocol breaks, whatever order the copies then
complete in; poisoned buffers make a late copy's data show as well.
"""

from __future__ import annotations

import pytest
import torch
from _cuda_double import POISON, CudaDoubleFactory, FakeCuda, Race

from swapseg.offload.transport import BufferPool, CudaTransport
from swapseg.offload.transport import cuda as cuda_mod
from swapseg.offload.transport.cuda_runtime import CudaRuntime, TorchCuda, pinned_reserved_bytes

CPU = torch.device("cpu")
SEEDS = [0, 1, 2]


def _transport(seed: int = 0, lazy: float = 0.7, **kw):
    rt = FakeCuda(seed=seed, lazy=lazy, **kw)
    return rt, CudaDoubleFactory(rt)(CPU)


def _program_bytes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n,), dtype=torch.uint8, generator=g)


def test_the_double_and_torch_cuda_offer_the_same_runtime():
    assert isinstance(FakeCuda(), CudaRuntime) and isinstance(TorchCuda(), CudaRuntime)
    assert isinstance(CudaTransport(CPU, pool=BufferPool(True), runtime=FakeCuda(),
                                    pin=True).rt, FakeCuda)


@pytest.mark.parametrize("seed", SEEDS)
def test_round_trip_and_pool_reuse(seed):
    rt, tr = _transport(seed)
    with rt.active():
        src = _program_bytes(1001, seed).add_(0)  # written by compute
        out = tr.start_out(src)
        stored = out.result()
        back = tr.start_in(stored, CPU).result()  # compute waits on the copy
        assert torch.equal(back, src)
        tr.free(stored)
        tr.close()
        again = tr._acquire(1001)
    assert again.data_ptr() == stored.data_ptr() and tr.pool.allocations == 1
    assert out.timed() and out.end_t >= out.start_t
    assert not rt.races


@pytest.mark.parametrize("seed", SEEDS)
def test_source_freed_while_its_copy_is_in_flight(seed):
    """torchtune #1867: the source dies while its copy-out is queued; its block is handed
    out again and overwritten. ``record_stream`` keeps the block until the copy ends."""
    rt, tr = _transport(seed, lazy=1.0)
    with rt.active():
        src = _program_bytes(777, seed).add_(0)
        want = src.clone()
        ticket = tr.start_out(src)
        del src  # the caller lets go at once
        torch.zeros(777, dtype=torch.uint8).add_(1)  # compute goes on
        stored = ticket.result()
        ticket.sync()
        assert torch.equal(stored, want)
    assert not rt.races


@pytest.mark.parametrize("seed", SEEDS)
def test_reload_landing_in_a_block_freed_mid_backward(seed):
    """DeepSpeed PR #8186: a prefetched reload nobody consumes is dropped (backward
    failed, or took another branch) while its copy still writes the block."""
    rt, tr = _transport(seed, lazy=1.0)
    with rt.active():
        src = _program_bytes(333, seed).add_(0)
        stored = tr.start_out(src).result()
        ticket = tr.start_in(stored, CPU)
        ticket.forget()
        del ticket  # the reload buffer dies with the copy in flight
        live = torch.ones(333, dtype=torch.uint8).add_(1)  # compute reuses memory
        rt.synchronize()
        assert int(live.sum()) == 666
    assert not rt.races


@pytest.mark.parametrize("seed", SEEDS)
def test_inline_reload_racing_its_own_copy_out(seed):
    """Megatron-LM #7398: a tensor reloaded right after it was saved, while its own
    copy-out may still be queued; the reload must read the finished copy."""
    rt, tr = _transport(seed, lazy=1.0)  # nothing runs unless a wait forces it
    with rt.active():
        src = _program_bytes(4099, seed).add_(0)
        out = tr.start_out(src)
        assert rt.pending() > 0  # the copy-out is still queued
        stored = out.result()  # no host wait
        back = tr.start_in(stored, CPU).result()
        assert torch.equal(back.add(0), src)  # compute reads the reload
    assert not rt.races


def test_a_freed_pinned_buffer_is_not_handed_out_under_its_reload():
    rt, tr = _transport(0, lazy=1.0)
    with rt.active():
        a = _program_bytes(64, 1).add_(0)
        stored = tr.start_out(a).result()
        ticket = tr.start_in(stored, CPU)
        tr.free(stored)  # the reload may still read it
        b = _program_bytes(64, 2).add_(0)
        stored_b = tr.start_out(b).result()
        assert stored_b.data_ptr() != stored.data_ptr()  # not reused while queued
        assert torch.equal(ticket.result().add(0), a)
        tr.close()
        assert tr.pool.free_bytes == 64 and tr.pool.allocations == 2
    assert not rt.races


def test_a_transport_that_clones_on_the_side_stream_is_caught():
    """TRL #7195 / axolotl #3833: an offset or non-contiguous view made contiguous on the
    transfer stream; its block belongs to that stream's pool."""

    class Cloning(CudaTransport):
        def start_out(self, src):
            with self.rt.stream(self.out_stream):
                flat = src.contiguous().view(torch.uint8).view(-1)
            return super().start_out(flat)

    rt = FakeCuda()
    tr = Cloning(CPU, pool=BufferPool(True), runtime=rt, pin=True)
    x = torch.arange(24.0).reshape(4, 6)
    with rt.active(), pytest.raises(Race, match="side"):
        tr.start_out(x.t())


def test_pinned_bytes_are_counted_as_the_allocator_reserves_them():
    assert [pinned_reserved_bytes(n) for n in (0, 1, 1000, 1024, 1025, 3 << 30)] == \
        [0, 1, 1024, 1024, 2048, 4 << 30]
    rt, tr = _transport(0)
    with rt.active():
        srcs = [_program_bytes(n, n).add_(0) for n in (1000, 3000, 4096)]
        stored = [tr.start_out(s).result() for s in srcs]
    assert tr.pool.allocated_bytes == 8096
    assert tr.reserved_bytes == tr.pool.reserved_bytes == 1024 + 4096 + 4096
    for s in stored:
        tr.free(s)
    tr.close()
    tr.pool.clear()
    assert tr.pool.allocated_bytes == 0 and tr.reserved_bytes == 0


def test_pinning_that_fails_falls_back_to_pageable_with_one_warning(monkeypatch):
    monkeypatch.setattr(cuda_mod, "_WARNED", set())
    rt, tr = _transport(0, pin_fails=True)
    with pytest.warns(RuntimeWarning, match="pageable.*pinning failed: CUDA error") as rec:
        with rt.active():
            srcs = [_program_bytes(n, n).add_(0) for n in (100, 200)]
            stored = [tr.start_out(s).result() for s in srcs]
            backs = [tr.start_in(s, CPU).result().add(0) for s in stored]
    assert len(rec) == 1 and not tr.pin
    assert all(torch.equal(a, b) for a, b in zip(srcs, backs, strict=True))
    assert tr.reserved_bytes == tr.pool.allocated_bytes == 300  # pageable: no rounding
    assert not rt.races


def test_swapseg_pin_memory_0_disables_pinning_with_one_warning(monkeypatch):
    monkeypatch.setattr(cuda_mod, "_WARNED", set())
    monkeypatch.setenv("SWAPSEG_PIN_MEMORY", "0")
    rt = FakeCuda()
    calls = []
    monkeypatch.setattr(rt, "pinned", lambda n: calls.append(n))
    with pytest.warns(RuntimeWarning, match="SWAPSEG_PIN_MEMORY=0") as rec:
        a = CudaTransport(CPU, pool=BufferPool(), runtime=rt)
        b = CudaTransport(CPU, pool=BufferPool(), runtime=rt)
    assert len(rec) == 1 and not a.pin and not b.pin
    with rt.active():
        src = _program_bytes(50, 0).add_(0)
        stored = a.start_out(src).result()
        assert torch.equal(a.start_in(stored, CPU).result().add(0), src)
    assert calls == [] and not rt.races


def test_poison_shows_a_reload_read_without_the_protocol():
    """The double's data check, apart from its ordering checks: a reload read straight
    from the buffer before its copy ran holds the poison byte."""
    rt, tr = _transport(0, lazy=1.0)
    src = _program_bytes(10, 0)
    stored = tr.start_out(src).result()
    ticket = tr.start_in(stored, CPU)
    assert torch.all(ticket._value == POISON)
    ticket.sync()
    assert torch.equal(ticket._value, src)
