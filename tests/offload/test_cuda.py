"""CUDA code paths: the cuda transport (pinned pool, side streams, events) and the engine on GPU.

Skipped without a GPU (tests/conftest.py). ``benchmarks/gpu_check.sh`` runs them. The same
transport code runs on CPU under the CUDA runtime double in test_cuda_protocol.py and
test_cuda_training.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _swap_models import ConvNet, assert_bitwise, assert_close, isensee, train_steps

from swapseg.offload import SwapPolicy, get_pool, swap_activations
from swapseg.offload.measure import keep_all, measure_steps, save_on_cpu, swap
from swapseg.offload.transport import BufferPool, CudaTransport, make_transport

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _deterministic():
    prev = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev


def _ctx(policy, **kw):
    return lambda m: swap_activations(m, policy, **kw)


def test_cuda_transport_round_trip_and_pool():
    pool = BufferPool(pin_memory=True)
    tr = CudaTransport(CUDA, pool=pool)
    src = torch.randint(0, 255, (1 << 20,), dtype=torch.uint8, device=CUDA)
    out = tr.start_out(src)
    out.sync()
    assert out.done()
    stored = out.result()
    assert stored.is_pinned() and torch.equal(stored, src.cpu())
    back = tr.start_in(stored, CUDA).result()  # the current stream waits on the copy
    assert back.is_cuda and torch.equal(back, src)
    tr.free(stored)
    tr.close()  # a freed buffer returns to the pool once both side streams passed it
    again = pool.acquire(1 << 20)
    assert again.data_ptr() == stored.data_ptr() and pool.allocations == 1
    assert pool.reserved_bytes == 1 << 20  # a power of two already


def test_cuda_tickets_carry_event_times_and_stalls():
    """Device times from events: a 256 MiB copy takes visible time; the host never blocks
    in result(), and the consumer's stall is measured on the device."""
    tr = CudaTransport(CUDA, pool=BufferPool(pin_memory=True))
    src = torch.randint(0, 255, (256 << 20,), dtype=torch.uint8, device=CUDA)
    out = tr.start_out(src)
    out.sync()
    assert out.timed() and out.end_t > out.start_t
    ticket = tr.start_in(out.result(), CUDA)
    ticket.result()  # the compute stream waits right away: it stalls for most of the copy
    ticket.sync()
    assert ticket.timed() and ticket.end_t > ticket.start_t
    assert 0 < ticket.wait_s <= ticket.end_t - ticket.start_t + 1e-3
    tr.close()


def test_auto_tier_is_cuda():
    assert make_transport("auto", CUDA).kind == "cuda"


@pytest.mark.parametrize("tier", ["cuda", "host", "disk"])
def test_bitwise_deterministic_model(tier, tmp_path):
    base = train_steps(ConvNet, _ctx(None), device="cuda")
    policy = SwapPolicy(tier=tier, prefetch=2, disk_dir=str(tmp_path) if tier == "disk" else None)
    run = train_steps(ConvNet, _ctx(policy), device="cuda")
    assert_bitwise(base, run)
    assert all(st.swapped > 0 for st in run[3])


def test_isensee_on_cuda_close_and_memory_saved():
    """Upsample backward is not deterministic on CUDA, so this compares with tolerances."""
    base = train_steps(isensee, _ctx(None), device="cuda")
    run = train_steps(isensee, _ctx(SwapPolicy(prefetch=4)), device="cuda")
    assert_close(base, run)
    assert all(st.prefetch_hits > 0 and st.device_bytes == 0 for st in run[3])


def test_swap_lowers_cuda_peak_and_does_not_leak():
    torch.manual_seed(0)
    model = isensee().to(CUDA)
    shape = (1, 2, 64, 64, 64)
    plain = measure_steps(copy.deepcopy(model), shape, keep_all, steps=2, warmup=1)
    swapped = measure_steps(copy.deepcopy(model), shape, swap(SwapPolicy(prefetch=2)),
                            steps=2, warmup=1)
    assert swapped["cuda_peak_bytes"] < plain["cuda_peak_bytes"]
    assert swapped["peak_device_bytes"] < plain["peak_device_bytes"] / 4
    pool = get_pool(True)
    x = torch.randn(shape, device=CUDA)
    with swap_activations(model, SwapPolicy()) as st:
        sizes, mem = [], []
        for _ in range(10):
            model(x).square().mean().backward()
            torch.cuda.synchronize()
            sizes.append(pool.allocated_bytes)
            mem.append(torch.cuda.memory_allocated())
    assert len(set(sizes[2:])) == 1 and len(set(mem[2:])) == 1
    assert pool.free_bytes == pool.allocated_bytes and st.device_bytes == 0


def test_trace_and_save_on_cpu_on_cuda(tmp_path):
    from swapseg.offload import plot_timeline
    model = isensee().to(CUDA)
    x = torch.randn(1, 2, 32, 32, 32, device=CUDA)
    with swap_activations(model, SwapPolicy(prefetch=3), trace=True) as st:
        for _ in range(2):
            model(x).square().mean().backward()
    assert {"out_end", "prefetch", "in_end", "free"} <= {e["kind"] for e in st.events}
    from swapseg.offload.timeline import copy_intervals
    outs = copy_intervals(st.events, "out_start", "out_end")
    assert outs and sum(b - a for a, b, _ in outs) > 0  # real copy durations, not zero
    plot_timeline(st.events, tmp_path / "t.png")
    r = measure_steps(copy.deepcopy(model), (1, 2, 32, 32, 32), save_on_cpu, steps=1,
                      warmup=0)
    assert r["bytes_out"] > 0 and "cuda_peak_bytes" in r
