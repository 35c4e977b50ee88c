"""swapseg bench largest: bisection, the cap of a probe process, the result's schema."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swapseg.errors import InputError
from swapseg.experiments import largest as L
from swapseg.experiments.largest_probe import idle_process_bytes
from swapseg.experiments.methods_bench import dice_trace
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import MemoryPlan
from swapseg.planner import DEFAULT_MARGIN
from swapseg.planner.profiles import PROFILES
from swapseg.planner.simulate import simulate

SIDES = list(range(16, 161, 16))  # 10 sides


def fake(threshold: int | None, calls: list[int]):
    def probe(side: int) -> L.Probe:
        calls.append(side)
        ok = threshold is not None and side <= threshold
        return L.Probe(side, "fits" if ok else "oom", 0.0)
    return probe


@pytest.mark.parametrize("threshold", [None, 16, 64, 80, 160])
def test_bisection_finds_the_threshold_in_log_probes(threshold):
    calls: list[int] = []
    best, probes = L.bisect_largest(fake(threshold, calls), SIDES)
    assert best == threshold
    assert len(probes) == len(calls) <= 4  # ceil(log2(11))
    assert len(set(calls)) == len(calls)


def test_a_right_guess_settles_it_in_two_probes():
    calls: list[int] = []
    best, _ = L.bisect_largest(fake(96, calls), SIDES, guess=96)
    assert best == 96 and calls == [96, 112]
    calls.clear()
    best, _ = L.bisect_largest(fake(96, calls), SIDES, guess=112)  # one too many
    assert best == 96 and calls == [112, 96]


def test_a_wrong_guess_still_bisects_to_the_answer():
    calls: list[int] = []
    best, _ = L.bisect_largest(fake(32, calls), SIDES, guess=150)
    assert best == 32 and len(calls) <= 6


def test_a_probe_status_other_than_fits_is_no_fit():
    for status in ("oom", "killed", "timeout", "no_plan", "error"):
        assert not L.Probe(64, status, 1.0).fits
    assert L.Probe(64, "fits", 1.0).as_dict()["fits"] is True


def test_the_cap_fails_an_allocation_beyond_it_in_a_fresh_process():
    code = ("import sys; from swapseg.experiments.largest_probe import set_cap, is_oom\n"
            "set_cap(600 * 2**20)\n"
            "import torch\n"
            "try:\n"
            "    torch.empty(800 * 2**20, dtype=torch.uint8).fill_(1); print('allocated')\n"
            "except RuntimeError as e:\n"
            "    print('oom' if is_oom(e) else 'other')\n"
            "torch.empty(50 * 2**20, dtype=torch.uint8).fill_(1); print('small ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["oom", "small", "ok"]


TINY = '{"base_filters": 4, "depth": 3}'


def test_a_probe_over_its_cap_is_oom_and_under_it_fits():
    # a tiny model's step at 64^3 allocates more than 200 MiB beyond torch itself
    big = L.run_probe(64, MemoryPlan(name="none"), 420 * 2**20, model_kwargs=TINY,
                      timeout_s=300)
    assert big.status == "oom" and not big.fits, big
    assert big.extra["cap_enforced"] == "RLIMIT_DATA"
    assert big.extra["rlimit_data_bytes"] == 420 * 2**20
    small = L.run_probe(16, MemoryPlan(name="none"), 2 * 2**30, model_kwargs=TINY,
                        timeout_s=300)
    assert small.fits, small
    assert small.step_s > 0 and 0 < small.peak_rss_bytes < 2 * 2**30


def test_a_probe_that_cannot_start_is_an_error_not_a_crash():
    r = L.run_probe(16, MemoryPlan(name="none"), 2**30, model_spec="no.such.module:f",
                    timeout_s=120)
    assert r.status == "error" and "no.such.module" in r.detail


def test_largest_json_schema(monkeypatch):
    model = Isensee3DUNet(base_filters=4, depth=3)  # divisor 4
    sides = [8, 12, 16, 20]

    def fake_probe(side, plan, cap, **kw):
        ok = side <= (12 if plan.name == "none" else 20)
        return L.Probe(side, "fits" if ok else "oom", 0.5, 10**8 if ok else None,
                       0.25 if ok else None, plan=plan.name)

    monkeypatch.setattr(L, "run_probe", fake_probe)
    monkeypatch.setattr(L, "idle_process_bytes", lambda python: 0)
    written = []
    res = L.run_largest(model, ["none", "swap-disk"], 2**30, sides, PROFILES["p100-nvlink"],
                        write=lambda r: written.append(r["methods"].copy()),
                        moonshot_side=24, moonshot_cap=2**30)
    assert written and {"cap_bytes", "device", "environment", "methods",
                        "moonshot_256"} <= set(res)
    assert res["cap_bytes"] == 2**30 and res["device"] == "cpu"
    for name, largest in (("none", 12), ("swap-disk", 20)):
        m = res["methods"][name]
        assert m["largest_side"] == largest and m["complete"]
        assert m["peak_rss_bytes"] == 10**8 and m["step_s"] == 0.25
        assert m["predicted_largest_side"] in sides
        assert all({"side", "status", "fits", "probe_s"} <= set(p) for p in m["probes"])
    ms = res["moonshot_256"]
    assert ms["completed"] is False and ms["side"] == 24
    assert {"peak_rss_bytes", "step_s", "predicted_compute_s"} <= set(ms)
    # the swap-disk search already ran the moonshot's step under a tighter cap: reused
    calls = []

    def counting(side, plan, cap, **kw):
        calls.append(side)
        return fake_probe(side, plan, cap, **kw)

    monkeypatch.setattr(L, "run_probe", counting)
    res = L.run_largest(model, ["swap-disk"], 2**30, sides, PROFILES["p100-nvlink"],
                        write=lambda r: None, moonshot_side=20, moonshot_cap=2**31)
    assert res["moonshot_256"]["completed"] and res["moonshot_256"]["step_s"] == 0.25
    assert "swap-disk search" in res["moonshot_256"]["probe"]["from"]
    assert calls.count(20) == 1
    # nothing fits: largest_side is null
    monkeypatch.setattr(L, "run_probe", lambda side, plan, cap, **kw: L.Probe(side, "oom", 0))
    res = L.run_largest(model, ["none"], 2**30, sides, PROFILES["p100-nvlink"],
                        write=lambda r: None)
    assert res["methods"]["none"]["largest_side"] is None


def test_cpu_methods_swap_to_disk_except_swap_host():
    model = Isensee3DUNet(base_filters=4, depth=3)
    prof = PROFILES["p100-nvlink"]
    shape = (1, 4, 16, 16, 16)
    for m in ("swap-disk", "hybrid"):
        assert L.method_plan(m, model, shape, prof, 2**30).swap.tier == "disk"
    assert L.method_plan("swap-host", model, shape, prof, 2**30).swap.tier == "host"
    assert L.method_plan("swap-disk", model, shape, prof, 2**30, cuda=True).swap.tier == "disk"
    assert L.method_plan("swap-host", model, shape, prof, 2**30, cuda=True).swap.tier == "cuda"
    assert L.method_plan("hybrid", model, shape, prof, 2**30, cuda=True).swap.tier == "cuda"
    assert L.method_plan("recompute-full", model, shape, prof, 2**30).swap is None


def test_copy_busy_time_merges_overlaps_and_a_disk_probe_reports_its_rates():
    from swapseg.experiments.largest_probe import _busy
    from swapseg.offload import SwapPolicy

    assert _busy([(0.0, 2.0, 1), (1.0, 3.0, 1), (5.0, 6.0, 1), (5.2, 5.5, 1)]) == 4.0
    r = L.run_probe(16, MemoryPlan(SwapPolicy(tier="disk", prefetch=4)), 2 * 2**30,
                    model_kwargs=TINY, timeout_s=300)
    assert r.fits, r
    t = r.extra["tier"]
    assert t["out_bytes"] > 0 and t["out_bytes_per_s"] > 0 and t["forward_s"] > 0


def test_the_process_bytes_come_off_a_cpu_cap():
    """A side that fits the cap by the step's own peak stops fitting once the probe
    process's bytes are counted; auto then plans for what is left."""
    model = Isensee3DUNet(base_filters=4, depth=3)
    prof = PROFILES["p100-nvlink"]
    tr = dice_trace(model, (1, 4, 16, 16, 16), None)
    keep = simulate(tr, prof).peak_bytes
    cap = int(keep / (1 - DEFAULT_MARGIN)) + 1
    assert L.predicted_fits("none", model, 16, 4, prof, cap)
    assert not L.predicted_fits("none", model, 16, 4, prof, cap, process_bytes=keep // 4)
    plan = L.method_plan("auto", model, (1, 4, 16, 16, 16), prof, cap,
                         process_bytes=keep // 4)
    assert plan is not None and plan.name != "auto: keep-all"
    assert L.predicted_fits("auto", model, 16, 4, prof, cap, process_bytes=keep // 4)


def test_idle_probe_measures_the_process_own_bytes():
    n = idle_process_bytes()
    assert 50 * 2**20 < n < 4 * 2**30  # torch imported: tens to hundreds of MiB
    with pytest.raises(InputError, match="idle probe process failed"):
        idle_process_bytes(python="/bin/false")
