"""The CUDA runtime double itself: each of its checks fires on the race it names, and its
streams and events behave as CUDA's do (late, reordered, forced by waits)."""

from __future__ import annotations

import pytest
import torch
from _cuda_double import POISON, FakeCuda, Race

CPU = torch.device("cpu")


def _side_copy(rt, s, dest, src):
    with rt.stream(s):
        rt.copy(dest, src)


def test_copy_runs_late_and_a_compute_wait_forces_it():
    rt = FakeCuda(seed=0, lazy=1.0)  # the scheduler never runs anything by itself
    s = rt.Stream(CPU)
    src = torch.arange(7, dtype=torch.uint8)
    dest = rt.pinned(7)
    s.wait_stream(rt.compute)
    _side_copy(rt, s, dest, src)
    end = rt.Event(enable_timing=True)
    end.record(s)
    assert not end.query() and rt.pending() > 0
    assert torch.all(dest == POISON)  # still queued: the poison shows
    rt.compute.wait_event(end)
    assert end.query() and torch.equal(dest, src)


def test_events_time_what_ran_between_them():
    rt = FakeCuda(seed=1, lazy=1.0)
    s = rt.Stream(CPU)
    a, b = rt.Event(enable_timing=True), rt.Event(enable_timing=True)
    a.record(s)
    s.wait_stream(rt.compute)
    src = torch.zeros(1 << 20, dtype=torch.uint8)
    _side_copy(rt, s, rt.pinned(1 << 20), src)
    b.record(s)
    with pytest.raises(RuntimeError, match="not completed"):
        a.elapsed_time(b)
    b.synchronize()
    assert a.query() and a.elapsed_time(b) > 0
    with pytest.raises(RuntimeError, match="enable_timing"):
        rt.Event().elapsed_time(b)


def test_seeds_give_different_completion_orders():
    def order(seed):
        rt = FakeCuda(seed=seed, lazy=0.5)
        streams = [rt.Stream(CPU) for _ in range(3)]
        srcs = [torch.full((5,), i, dtype=torch.uint8) for i in range(30)]
        for i, src in enumerate(srcs):
            s = streams[i % 3]
            s.wait_stream(rt.compute)
            _side_copy(rt, s, rt.pinned(5), src)
        rt.synchronize()
        return rt.ran, rt.out_of_order()
    runs = [order(seed) for seed in range(4)]
    assert len({tuple(r) for r, _ in runs}) > 1 and any(o for _, o in runs)


def test_copy_of_a_source_compute_may_still_write_is_a_race():
    rt = FakeCuda()
    s = rt.Stream(CPU)
    with rt.active():
        src = torch.ones(9).mul(3)  # written by compute
    with pytest.raises(Race, match="program storage .* compute's last write"):
        _side_copy(rt, s, rt.pinned(36), src.view(torch.uint8))
    assert rt.races


def test_compute_reading_a_reload_before_waiting_is_a_race():
    rt = FakeCuda(lazy=1.0)
    s = rt.Stream(CPU)
    dest, src = rt.empty(12, CPU), torch.arange(12, dtype=torch.uint8)
    s.wait_stream(rt.compute)
    _side_copy(rt, s, dest, src)
    with rt.active(), pytest.raises(Race, match="reads device buffer"):
        dest.sum()


def test_compute_overwriting_a_source_under_its_copy_is_a_race():
    rt = FakeCuda(lazy=1.0)
    s = rt.Stream(CPU)
    src = torch.zeros(16, dtype=torch.uint8)
    s.wait_stream(rt.compute)
    _side_copy(rt, s, rt.pinned(16), src)
    with rt.active(), pytest.raises(Race, match="writes program storage"):
        src.add_(1)


def test_freeing_a_block_a_copy_may_still_write_needs_record_stream():
    for record in (True, False):
        rt = FakeCuda(lazy=1.0)
        s = rt.Stream(CPU)
        dest, src = rt.empty(10, CPU), torch.ones(10, dtype=torch.uint8)
        s.wait_stream(rt.compute)
        _side_copy(rt, s, dest, src)
        if record:
            rt.record_stream(dest, s)
        del dest
        if record:
            rt.synchronize()
            assert not rt.races
        else:
            with pytest.raises(Race, match="freed while copy #0 .*record_stream"):
                rt.synchronize()


def test_a_host_buffer_reused_under_a_queued_copy_is_a_race():
    rt = FakeCuda(lazy=1.0)
    s = rt.Stream(CPU)
    buf, src = rt.pinned(8), torch.ones(8, dtype=torch.uint8)
    s.wait_stream(rt.compute)
    _side_copy(rt, s, buf, src)
    with pytest.raises(Race, match="pinned buffer .* handed out again while copy #0"):
        rt.check_idle(buf, "handed out again")
    rt.synchronize()
    rt.check_idle(buf, "handed out again")


def test_an_op_run_on_a_side_stream_is_a_race():
    """An allocation under a side stream lands in its pool (TRL #7195, axolotl #3833)."""
    rt = FakeCuda()
    s = rt.Stream(CPU)
    x = torch.arange(12.0).reshape(3, 4).t()
    with rt.active(), rt.stream(s), pytest.raises(Race, match="clone.*side"):
        x.contiguous()


def test_work_queued_after_the_host_saw_a_copy_end_is_ordered_after_it():
    rt = FakeCuda(lazy=1.0)
    s = rt.Stream(CPU)
    dest, src = rt.empty(4, CPU), torch.ones(4, dtype=torch.uint8)
    s.wait_stream(rt.compute)
    _side_copy(rt, s, dest, src)
    end = rt.Event()
    end.record(s)
    end.synchronize()  # the host observed the end: no stream wait needed
    with rt.active():
        assert int(dest.sum()) == 4
    assert not rt.races
