import resource
import time

import pytest
import torch
from torch import nn

from swapseg.experiments.methods_bench import dice_trace
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.measure import default_loss
from swapseg.planner.trace import trace_step

SMALL = (1, 4, 8, 12, 16)


def _real_saved(model, x):
    """Unique non-parameter storages autograd saves in a real step, and the pack count."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, packs = {}, [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            packs[0] += 1
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        default_loss(model(x)).backward()
    return seen, packs[0]


def test_trace_matches_a_real_step():
    model = Isensee3DUNet(base_filters=4, depth=3, dropout=0.0)
    tr = trace_step(model, SMALL)
    seen, packs = _real_saved(model, torch.randn(SMALL))
    uniq = tr.unique_saved()
    assert len(tr.saved) == packs
    assert len(uniq) == len(seen)
    assert sum(r[0].nbytes for r in uniq.values()) == sum(seen.values())
    # every saved tensor has a scope, a producer before its pack, and a use in backward
    for s in tr.saved:
        st = tr.storages[s.uid]
        assert st.produced_at <= s.packed_at < tr.n_fwd_ops
        assert s.uses and min(s.uses) >= tr.n_fwd_ops
        assert s.released_at is not None and s.released_at >= max(s.uses)
    assert {s.scope.split(".")[0] for s in tr.saved} >= {"encoder", "decoder", "heads"}
    assert tr.param_bytes == 4 * sum(p.numel() for p in model.parameters())
    assert tr.grad_bytes == tr.param_bytes and tr.optimizer_bytes == 2 * tr.param_bytes
    # the model is left untouched: real parameters, no hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_flops_of_one_conv_by_hand():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    tr = trace_step(conv, (1, 2, 4, 5, 6), optimizer_states=0)
    fwd = sum(o.flops for o in tr.ops if o.phase == "fwd")
    bwd = sum(o.flops for o in tr.ops if o.phase == "bwd")
    macs = 2 * 3 * 27 * (4 * 5 * 6)  # C_in * C_out * k^3 * output voxels
    assert fwd == 2 * macs
    # the input needs no grad: backward computes only the weight gradient
    assert bwd == 2 * macs
    assert tr.optimizer_bytes == 0


def test_order_of_use_is_reverse_of_production_for_a_chain():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv3d(2, 2, 1),
                          nn.Tanh())
    tr = trace_step(model, (1, 1, 5, 6, 7))
    packed = [s.packed_at for s in tr.saved]
    assert packed == sorted(packed)
    # saved by a later op -> used earlier in backward (tensors saved by one op share a node)
    for a in tr.saved:
        for b in tr.saved:
            if a.packed_at < b.packed_at:
                assert min(a.uses) > min(b.uses)


@pytest.mark.parametrize("side, saved", [(192, 174), (256, 176)])
def test_full_size_trace_is_fast_and_allocates_nothing_big(side, saved):
    model = Isensee3DUNet()
    trace_step(model, (1, 4, 32, 32, 32))  # one-time FakeTensorMode set-up, paid once a process
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    # CPU time, not wall time: a loaded machine's wait for a core is not the trace's cost
    t0 = time.process_time()
    tr = dice_trace(model, (1, 4, side, side, side))  # the training loss, as docs quote
    elapsed = time.process_time() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    s = tr.summary()
    assert elapsed <= 10.0
    assert s["saved_bytes"] > 10 * 2**30   # what a real step would hold ...
    assert grown < 512 * 2**20              # ... and what tracing it cost
    # 174: the 192^3 figure quoted in docs/planner.md; at 256^3 the finest decoder level
    # convolves its two 2 GiB inputs in pieces, each saved on its own (+2)
    assert s["saved_tensors"] == saved
