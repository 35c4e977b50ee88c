"""On a CPU only the disk tier frees memory: the simulator, the search and the profile."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.policy import SwapPolicy
from swapseg.planner.calibrate import _fit_other, calibrate_tier, calibrated, conv_curve
from swapseg.planner.profiles import DeviceProfile, layer_key
from swapseg.planner.search import search
from swapseg.planner.simulate import simulate, swap_mode
from swapseg.planner.trace import trace_step
from tests.planner.test_simulate import DEV, toy_trace

CPU = dataclasses.replace(DEV, unified_memory=True, disk_write_bytes_per_s=25.0,
                          disk_read_bytes_per_s=50.0, disk_cache_bytes=0)


def test_swap_modes():
    assert swap_mode(SwapPolicy(), DEV) == "link"
    assert swap_mode(SwapPolicy(), CPU) == "disk"  # auto on a CPU is the disk tier
    assert swap_mode(SwapPolicy(tier="host"), CPU) == "same-memory"
    no_disk = dataclasses.replace(CPU, disk_write_bytes_per_s=0.0)
    assert swap_mode(SwapPolicy(tier="disk"), no_disk) == "link"


def test_disk_tier_by_hand():
    r = simulate(toy_trace(), CPU, SwapPolicy(tier="disk"))
    # A (100 B) written 2..6 at 25 B/s; read 6..8 at 50 B/s; op4 waits from 4 to 8
    assert r.stall_s == pytest.approx(4.0)
    assert r.step_s == pytest.approx(10.0)
    # the slow write keeps A resident through op3 (A + C = 150)
    assert r.peak_bytes == 150 + 21
    cached = simulate(toy_trace(), dataclasses.replace(CPU, disk_cache_bytes=100),
                      SwapPolicy(tier="disk"))
    # within the page cache's share both copies run at memory speed (100 B/s): 7 s
    assert cached.step_s == pytest.approx(7.0)
    assert cached.peak_bytes == 110 + 21  # A leaves before op3: freed like any swap


def test_host_tier_on_a_cpu_frees_nothing():
    keep = simulate(toy_trace(), CPU)
    host = simulate(toy_trace(), CPU, SwapPolicy(tier="host"))
    # the pool's 100 B buffer lives in the same memory as the reloaded tensor
    assert host.peak_bytes == 110 + 21 + 100 > keep.peak_bytes
    link = simulate(toy_trace(), DEV, SwapPolicy(tier="host"))
    assert link.peak_bytes == 110 + 21  # a GPU's host tier does free device memory


def test_search_on_a_cpu_chooses_disk_never_host():
    fast = dataclasses.replace(CPU, disk_cache_bytes=100)
    res = search(toy_trace(), fast, budget_bytes=140, margin=0.0)
    assert res.chosen is not None and res.chosen.swap is not None
    assert res.chosen.swap.tier == "disk"
    model = Isensee3DUNet(base_filters=4, depth=3)
    tr = trace_step(model, (1, 4, 16, 16, 16))
    keep = simulate(tr, CPU).peak_bytes
    res = search(tr, CPU, budget_bytes=int(0.8 * keep), margin=0.0)
    assert res.chosen is not None
    assert res.chosen.swap is None or res.chosen.swap.tier == "disk"
    assert all(c.swap is None or c.swap.tier == "disk" for c in res.candidates)
    gpu = search(tr, DEV, budget_bytes=int(0.8 * keep), margin=0.0)
    assert all(c.swap is None or c.swap.tier == "cuda" for c in gpu.candidates)


def test_conv_curve_bins_and_interpolates():
    # two ops of 2 and 2 FLOPs... in one octave bin: 4 FLOPs in 2 s -> 2 FLOP/s
    pts = conv_curve([(2.0, 1.0), (2.0, 1.0), (64.0, 8.0)])
    assert pts[0] == pytest.approx((2.0, 2.0)) and pts[1] == pytest.approx((64.0, 8.0))
    prof = DeviceProfile("c", 1, 1.0, 1e30, 1.0, 1.0, op_overhead_s=0.0,
                         conv_rate_curve={"fwd": pts})
    assert prof.op_seconds(2.0, 0, "fwd") == pytest.approx(1.0)        # at a point
    assert prof.op_seconds(1024.0, 0, "fwd") == pytest.approx(128.0)   # constant past it
    # halfway in log FLOPs (2**3.5) the rate is halfway in log rate: sqrt(2 * 8) = 4
    assert prof.op_seconds(2**3.5, 0, "fwd") == pytest.approx(2**3.5 / 4)
    assert prof.op_seconds(8.0, 0, "bwd") == pytest.approx(8.0)       # no curve: 1 FLOP/s
    back = DeviceProfile.from_dict(prof.to_dict())
    assert back.conv_rate_curve == prof.conv_rate_curve


def test_other_ops_fit_recovers_bandwidth_and_overhead():
    # other_s = io / 1e9 + ops * 1e-4
    steps = [{"other_io_bytes": io, "other_ops": n, "other_s": io / 1e9 + n * 1e-4}
             for io, n in ((1e9, 1000), (8e9, 1100), (27e9, 1300))]
    bw, ovh = _fit_other(steps)
    assert bw == pytest.approx(1e9, rel=1e-6) and ovh == pytest.approx(1e-4, rel=1e-6)
    assert _fit_other(steps[:1]) == pytest.approx((1e9 / 1.1, 0.0))


def test_forward_waits_for_the_disk_past_the_in_flight_bound(monkeypatch):
    r = simulate(toy_trace(), CPU, SwapPolicy(tier="disk", max_inflight_bytes=50))
    # A (100 B > 50 B) is written 2..6; forward waits for it after op1 (2..6); ops 2, 3
    # run 6..8; A is read 8..10 and op4 waits for it: 4 + 2 s stalled, 12 s in all
    assert r.stall_s == pytest.approx(6.0)
    assert r.step_s == pytest.approx(12.0)
    eng = importlib.import_module("swapseg.offload.engine")  # the default is the engine's
    monkeypatch.setattr(eng, "DISK_INFLIGHT_BYTES", 50)
    assert simulate(toy_trace(), CPU, SwapPolicy(tier="disk")).step_s == pytest.approx(12.0)
    free = simulate(toy_trace(), CPU, SwapPolicy(tier="disk", max_inflight_bytes=100))
    assert free.step_s == pytest.approx(10.0)  # A fits the bound: as without one


def test_disk_copies_cost_the_cores_their_measured_cpu_rates():
    shared = dataclasses.replace(CPU, copies_share_compute=True, disk_cache_bytes=100,
                                 d2h_bytes_per_s=1e30, h2d_bytes_per_s=1e30)
    fast = simulate(toy_trace(), shared, SwapPolicy(tier="disk"))
    assert fast.step_s == pytest.approx(6.0)  # memory copies of no cost
    cache = dataclasses.replace(shared, disk_write_cpu_bytes_per_s=50.0,
                                disk_read_cpu_bytes_per_s=100.0)
    slow = simulate(toy_trace(), cache, SwapPolicy(tier="disk"))
    # A's write (100 B at 50 B/s) takes 2 s of the cores, its read 1 s: 6 + 3 s
    assert slow.step_s == pytest.approx(9.0)


def test_layer_rates_and_the_size_dependent_bandwidth_by_hand():
    prof = DeviceProfile("c", 1, 1.0, 1e9, 1.0, 1.0, op_overhead_s=0.0,
                         conv_layer_rates={"fwd|16,16,3,1": ((1e9, 1e10), (8e9, 2e10))},
                         mem_rate_curve=((1e6, 1e10), (1e8, 1e9)))
    key = layer_key("fwd", "16,16,3,1,64,64,64")
    assert key == "fwd|16,16,3,1" and layer_key("fwd", "") == ""
    assert prof.op_seconds(1e9, 10**12, "fwd", key) == pytest.approx(0.1)  # FLOPs alone
    # halfway in log FLOPs (sqrt(8) GFLOP) the rate is sqrt(2) x 1e10
    assert prof.op_seconds(8**0.5 * 1e9, 0, "fwd", key) == pytest.approx(0.2)
    assert prof.op_seconds(16e9, 0, "fwd", key) == pytest.approx(0.8)  # constant past it
    # another layer shape: the flat 1 FLOP/s against the io at the size's bandwidth
    assert prof.op_seconds(1e-3, 10**6, "fwd", "fwd|4,16,3,1") == pytest.approx(1e-3)
    assert prof.op_seconds(0, 10**6, "") == pytest.approx(1e-4)
    assert prof.op_seconds(0, 10**9, "") == pytest.approx(1.0)  # 1e9 B/s past 1e8 B
    back = DeviceProfile.from_dict(prof.to_dict())
    assert back.conv_layer_rates == prof.conv_layer_rates
    assert back.mem_rate_curve == prof.mem_rate_curve


def test_calibrated_pools_layer_rates_and_places_bandwidth_at_the_ops_size():
    def step(side, conv_s, other_s, centre):
        return {"shape": [1, 1, side], "fwd": 1.0, "other_io_bytes": 8e9, "other_ops": 10,
                "other_s": other_s, "other_io_centre": centre,
                "conv_points": {"fwd": [(1e9, conv_s), (1e9, conv_s)]},
                "conv_layers": {"fwd": [("fwd|8,8,3,1", 1e9, conv_s),
                                        ("fwd|8,8,3,1", 1e9, conv_s)]}}
    # two shapes with the same io: the fit of bandwidth + overhead has no solution,
    # so the overhead is 0 and the mean bandwidth stands beside the curve
    prof = calibrated(DeviceProfile("c", 1, 1.0, 1.0, 1.0, 1.0),
                      [step(32, 0.5, 2.0, 1e6), step(64, 0.25, 8.0, 4e6)])
    assert prof.op_overhead_s == 0.0
    # every op of one layer shape and FLOPs pooled, both steps': 4 GFLOP in 1.5 s
    (point,) = prof.conv_layer_rates["fwd|8,8,3,1"]
    assert point == pytest.approx((1e9, 4e9 / 1.5))
    low, high = prof.mem_rate_curve  # 8e9 B in 2 s at 1e6 B, in 8 s at 4e6 B
    assert low == pytest.approx((1e6, 4e9)) and high == pytest.approx((4e6, 1e9))


def test_fitted_disk_copy_costs_land_on_the_cores():
    shared = dataclasses.replace(CPU, copies_share_compute=True, disk_cache_bytes=100,
                                 d2h_bytes_per_s=1e30, h2d_bytes_per_s=1e30)
    extra = dataclasses.replace(shared, disk_copy_overhead_s=0.5, disk_copy_s_per_byte=0.01)
    # A (100 B) out and back: each copy 0.5 s + 100 B x 0.01 s/B on the compute lane
    assert simulate(toy_trace(), extra, SwapPolicy(tier="disk")).step_s == pytest.approx(9.0)
    assert simulate(toy_trace(), extra).step_s == pytest.approx(6.0)  # nothing copied


def test_calibrate_tier_fits_non_negative_costs_from_real_steps(tmp_path):
    model = Isensee3DUNet(base_filters=4, depth=3)
    prof = dataclasses.replace(CPU, copies_share_compute=True)
    shapes = [(1, 4, 16, 16, 16), (1, 4, 24, 24, 24)]
    fitted, rows = calibrate_tier(prof, model, shapes,
                                  policy=SwapPolicy(tier="disk", disk_dir=str(tmp_path)))
    assert [r["shape"] for r in rows] == [list(s) for s in shapes]
    assert all(r["copies"] > 0 and r["bytes"] > 0 and r["wall_s"] > 0 for r in rows)
    assert fitted.disk_copy_overhead_s >= 0 and fitted.disk_copy_s_per_byte >= 0
    assert "disk-tier step" in fitted.sources["disk_copies"]


def test_search_tries_larger_in_flight_bounds_where_the_default_makes_forward_wait(
        monkeypatch):
    eng = importlib.import_module("swapseg.offload.engine")
    monkeypatch.setattr(eng, "DISK_INFLIGHT_BYTES", 50)  # A (100 B) waits past it: 12 s
    res = search(toy_trace(), CPU, budget_bytes=140, margin=0.0)
    rows = {c.name: c.result for c in res.candidates}
    wide = rows["swap-all-pf4-inflight1024MiB"]  # forward runs on while A is written
    assert wide.step_s == pytest.approx(10.0) and rows["swap-all-pf1"].step_s == 12.0
    assert wide.peak_bytes == 171  # A stays until its write ends: no memory saved
    assert res.chosen.name == "swap-all-pf1"  # the budget (140) needs the wait


def test_a_storage_counts_as_resident_until_twice_its_disk_write_time(monkeypatch):
    """A (100 B) is written 2..3 at 100 B/s past a page cache of none. Its write may run
    slower on the day: it counts as resident until 2 + 2 * 1 = 4, through op3, where C
    (50 B) is made: 150 + 21. Trusting the predicted time it would leave after op2."""
    disk = dataclasses.replace(CPU, disk_write_bytes_per_s=100.0)
    assert simulate(toy_trace(), disk, SwapPolicy(tier="disk")).peak_bytes == 150 + 21
    sim = importlib.import_module("swapseg.planner.simulate")
    monkeypatch.setattr(sim, "DISK_COPY_SLACK", 1.0)
    assert simulate(toy_trace(), disk, SwapPolicy(tier="disk")).peak_bytes == 110 + 21
