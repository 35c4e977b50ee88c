"""The simulator on a hand-built trace (values worked out by hand), and against real runs."""

import dataclasses

import pytest
import torch

from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.apply import swap_activations
from swapseg.offload.measure import default_loss, profiled_peak_bytes
from swapseg.offload.policy import SwapPolicy, scope_matches
from swapseg.offload.recompute import RecomputePolicy
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.simulate import decide, simulate
from swapseg.planner.trace import (
    OpRecord,
    SavedRecord,
    StepTrace,
    StorageRecord,
    trace_step,
)

# 1 FLOP/s, no memory-bound ops, no overhead: an op with flops=1 takes 1 s
DEV = DeviceProfile("toy", 10**6, flops_per_s=1.0, mem_bytes_per_s=1e30,
                    d2h_bytes_per_s=100.0, h2d_bytes_per_s=100.0, op_overhead_s=0.0)


def toy_trace() -> StepTrace:
    """fwd: op0 makes A (100 B); op1 makes B (10 B) and saves A; op2; op3 makes C (50 B).
    bwd: op4 uses A; op5. A's forward life ends at op1, B's at op2, C's at op3."""
    ops = [OpRecord(i, "fwd" if i < 4 else "bwd", "aten.x", "m" if i < 4 else "", 1.0, 0)
           for i in range(6)]
    st = {0: StorageRecord(0, 100, "act", 0, 1, "aten.x", "m"),
          1: StorageRecord(1, 10, "act", 1, 2, "aten.x", "m"),
          2: StorageRecord(2, 50, "act", 3, 3, "aten.x", "m")}
    saved = [SavedRecord(0, 0, 100, "m", 1, uses=[4], released_at=4)]
    return StepTrace("toy", (1,), ops, st, saved, param_bytes=7, grad_bytes=0,
                     optimizer_bytes=14, n_fwd_ops=4, module_inputs={}, module_ops={})


def test_keep_all_by_hand():
    r = simulate(toy_trace(), DEV)
    # 6 ops of 1 s; peak at op3: A (kept for backward) + C = 150, plus params+Adam 21
    assert r.step_s == pytest.approx(6.0)
    assert r.stall_s == 0
    assert r.peak_bytes == 150 + 21
    assert r.peak_saved_bytes == 100


def test_swap_by_hand():
    r = simulate(toy_trace(), DEV, SwapPolicy())
    # copy-out of A after op1: t=2..3 (100 B at 100 B/s), so A leaves after op2;
    # backward starts at t=4, swap-in 4..5, op4 stalls 1 s; total 7 s
    assert r.stall_s == pytest.approx(1.0)
    assert r.step_s == pytest.approx(7.0)
    # peak: op1 (A + B = 110) or op2 (A + B); op3 holds only C; op4 holds A again
    assert r.peak_bytes == 110 + 21
    assert r.swapped_tensors == 1 and r.swapped_bytes == 100
    tl = r.timeline
    assert tl["copy_out_s"] == [[2.0, 3.0]] and tl["copy_in_s"] == [[4.0, 5.0]]
    assert tl["stalls_s"] == [[4.0, 5.0]]


def test_slow_link_stalls_longer():
    slow = dataclasses.replace(DEV, d2h_bytes_per_s=25.0, h2d_bytes_per_s=25.0)
    r = simulate(toy_trace(), slow, SwapPolicy())
    # copy-out 2..6 (4 s), swap-in can start only then: 6..10; op4 waits from t=4 to 10
    assert r.stall_s == pytest.approx(6.0)
    assert r.step_s == pytest.approx(12.0)


def test_scope_matches_like_the_engine():
    assert scope_matches("decoder.0.loc1.0", ("decoder.*",))
    assert scope_matches("decoder.0.loc1.0", ("decoder.0.loc1",))
    assert not scope_matches("encoder.0", ("decoder.*",))
    assert scope_matches("", ("*",)) and not scope_matches("", ("decoder",))


SMALL = (1, 4, 8, 12, 16)


def test_decide_counts_and_recompute_never_swapped():
    model = Isensee3DUNet(base_filters=4, depth=3)
    tr = trace_step(model, SMALL)
    n = len(tr.unique_saved())
    assert decide(tr, SwapPolicy(), None).count("swap") == n
    assert decide(tr, SwapPolicy(n_tensors=5), None).count("swap") == 5
    d = decide(tr, SwapPolicy(exclude=("decoder.*",)), None)
    assert all(not tr.unique_saved()[u][0].scope.startswith("decoder")
               for u, f in d.fate.items() if f == "swap")
    d = decide(tr, SwapPolicy(), RecomputePolicy(("encoder.*",)))
    enc = {u for u, r in tr.unique_saved().items() if r[0].scope.startswith("encoder")}
    assert d.count("recompute") > 0
    # the engine's hooks see a checkpoint's inputs (saved at its entry) and what is
    # saved outside it too, so those may be swapped; nothing else saved inside
    inputs = {u for r, us in tr.module_inputs.items()
              if r.startswith("encoder.") and r.count(".") == 1 for u in us}
    swapped = {u for u in enc if d.fate[u] == "swap"}
    assert swapped and all(u in inputs or not all(x.scope.startswith("encoder")
                                                   for x in tr.unique_saved()[u])
                           for u in swapped)
    dev = dataclasses.replace(DEV, mem_bytes_per_s=1.0)  # element-wise ops cost time too
    full = simulate(tr, dev, None, RecomputePolicy(("*",)))
    speed = simulate(tr, dev, None, RecomputePolicy(("*",), "speed"))
    keep = simulate(tr, dev)
    assert full.recomputed_tensors > speed.recomputed_tensors > 0
    assert full.peak_saved_bytes < speed.peak_saved_bytes < keep.peak_saved_bytes
    assert keep.step_s < speed.step_s < full.step_s


def _plain_step(model, x):
    default_loss(model(x)).backward()


@pytest.mark.parametrize("side", [24, 32])
def test_no_swap_peak_within_10pct_of_profiler(side):
    # real peak of allocations in a steady-state step (Adam state exists, grads set to None)
    torch.manual_seed(0)
    model = Isensee3DUNet(base_filters=8, depth=4)  # the full-size check is in docs/planner.md
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(1, 4, side, side, side)

    def step():
        opt.zero_grad(set_to_none=True)
        _plain_step(model, x)
        opt.step()

    step()
    persistent = 3 * sum(p.numel() * 4 for p in model.parameters())
    measured = persistent + profiled_peak_bytes(step)
    cpu = dataclasses.replace(DEV, cpu_conv_workspace=True)  # native conv im2col buffers
    predicted = simulate(trace_step(model, x.shape), cpu).peak_bytes
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)


@pytest.mark.parametrize("policy", [
    SwapPolicy(prefetch=1),
    SwapPolicy(exclude=("decoder.*",), prefetch=20),
    SwapPolicy(n_tensors=30, prefetch=4),
    SwapPolicy(n_tensors=0),
])
def test_swap_peak_within_10pct_of_engine_accounting(policy):
    model = Isensee3DUNet(base_filters=8, depth=4)
    x = torch.randn(1, 4, 32, 32, 32)
    # copies run inline (workers=0), so the engine's accounting is deterministic; model it
    # as an infinitely fast link
    fast = dataclasses.replace(DEV, d2h_bytes_per_s=1e30, h2d_bytes_per_s=1e30)
    with swap_activations(model, policy, workers=0) as stats:
        _plain_step(model, x)
    r = simulate(trace_step(model, x.shape), fast, policy)
    assert r.swapped_tensors == stats.swapped
    assert abs(r.peak_saved_bytes / stats.peak_saved_bytes - 1) < 0.10


def _out_of_order_trace() -> StepTrace:
    """fwd saves A (500 B, op0), B (10 B, op1), C (1000 B, op2); bwd unpacks them in
    forward order, A at op4, B at op5, C at op6: not reverse forward order."""
    ops = [OpRecord(i, "fwd" if i < 4 else "bwd", "aten.x", "m" if i < 4 else "", 1.0, 0)
           for i in range(8)]
    sizes = (500, 10, 1000)
    st = {u: StorageRecord(u, n, "act", u, u + 1, "aten.x", "m") for u, n in enumerate(sizes)}
    saved = [SavedRecord(u, u, n, "m", u, uses=[4 + u], released_at=4 + u)
             for u, n in enumerate(sizes)]
    return StepTrace("order", (1,), ops, st, saved, param_bytes=0, grad_bytes=0,
                     optimizer_bytes=0, n_fwd_ops=4, module_inputs={}, module_ops={})


def test_first_step_prefetches_in_reverse_forward_order():
    """With no learned order, the first step's window prefetches C (used last) at the
    start of backward, so C is resident beside A: 1500 B. Later steps prefetch by the
    learned order: at most B + C = 1010 B. The plan's peak is the first step's."""
    fast = dataclasses.replace(DEV, d2h_bytes_per_s=1e6, h2d_bytes_per_s=1e6)
    r = simulate(_out_of_order_trace(), fast, SwapPolicy(prefetch=1))
    assert max(r.timeline["memory_bytes"]) == 1010  # the later steps
    assert r.first_step_peak_bytes == 1500
    assert r.peak_bytes == 1500
    keep = simulate(_out_of_order_trace(), fast)
    assert keep.first_step_peak_bytes == keep.peak_bytes  # nothing swapped: no order


def test_storages_policy_swaps_exactly_those():
    tr = _out_of_order_trace()
    fast = dataclasses.replace(DEV, d2h_bytes_per_s=1e6, h2d_bytes_per_s=1e6)
    r = simulate(tr, fast, SwapPolicy(storages=(0, 2)))
    assert r.swapped_tensors == 2 and r.swapped_bytes == 1500
    dec = decide(tr, SwapPolicy(storages=(1,)), None)
    assert dec.fate == {0: "keep", 1: "swap", 2: "keep"}


def test_a_queued_copy_in_holds_its_buffer_from_the_request():
    """A (10 B, used at op4), B (1000 B, op6), C (10 B, op7); copy-outs instant, copy-ins
    at 100 B/s, prefetch 2. Backward asks for A and B at t=4 (A 4..4.1, B 4.1..14.1);
    A's unpack at op4 asks for C at 4.1, whose copy waits behind B until 14.1, during
    op6. The transport allocates C's buffer when asked, so op5 holds B and C: 1010 B."""
    ops = [OpRecord(i, "fwd" if i < 4 else "bwd", "aten.x", "m" if i < 4 else "", 1.0, 0)
           for i in range(8)]
    sizes, uses = (10, 1000, 10), (4, 6, 7)
    st = {u: StorageRecord(u, n, "act", u, u + 1, "aten.x", "m") for u, n in enumerate(sizes)}
    saved = [SavedRecord(u, u, n, "m", u, uses=[uses[u]], released_at=uses[u])
             for u, n in enumerate(sizes)]
    trace = StepTrace("queued", (1,), ops, st, saved, param_bytes=0, grad_bytes=0,
                      optimizer_bytes=0, n_fwd_ops=4, module_inputs={}, module_ops={})
    link = dataclasses.replace(DEV, d2h_bytes_per_s=1e9)
    r = simulate(trace, link, SwapPolicy(prefetch=2))
    assert r.timeline["copy_in_s"][2] == pytest.approx([14.1, 14.2])  # C, behind B
    assert r.timeline["memory_bytes"][5] == 1010


def test_a_storage_saved_again_in_an_excluded_scope_stays_on_the_device():
    """A (100 B) is saved by op1 in ``enc`` and again by op2 in ``dec``. Excluding
    ``dec`` swaps A's first pack, but the engine keeps a device entry for the second
    (``SwapEngine.pack``), so A stays resident: keep-all's peak. Excluding nothing swaps
    it and frees it (131 B, as in ``test_swap_by_hand``)."""
    tr = toy_trace()
    tr.saved.append(SavedRecord(1, 0, 100, "dec", 2, uses=[4], released_at=4))
    kept = simulate(tr, DEV, SwapPolicy(exclude=("dec",)))
    assert kept.swapped_tensors == 0 and kept.peak_bytes == 150 + 21
    assert simulate(tr, DEV, SwapPolicy(exclude=("other",))).peak_bytes == 110 + 21


def test_a_rerun_holds_its_regions_unsaved_outputs_again():
    """Module m (ops 0-3) saves A (100 B, op0, used at op4) and makes T (40 B) at op1,
    freed at op2, saved by no one. Recomputing m reruns ops 0-3 before op4: op4 holds A
    again and, while the rerun runs, T too: 100 + 40 (no weights here)."""
    ops = [OpRecord(i, "fwd" if i < 4 else "bwd", "aten.x", "m" if i < 4 else "", 1.0, 0)
           for i in range(6)]
    st = {0: StorageRecord(0, 100, "act", 0, 1, "aten.x", "m"),
          1: StorageRecord(1, 40, "act", 1, 2, "aten.x", "m")}
    saved = [SavedRecord(0, 0, 100, "m", 0, uses=[4], released_at=4)]
    tr = StepTrace("rerun", (1,), ops, st, saved, param_bytes=0, grad_bytes=0,
                   optimizer_bytes=0, n_fwd_ops=4, module_inputs={"m": []},
                   module_ops={"m": (0, 3)})
    r = simulate(tr, DEV, None, RecomputePolicy(("m",)))
    assert r.recomputed_tensors == 1
    assert r.timeline["memory_bytes"][4] == 100 + 40
