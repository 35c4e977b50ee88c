"""swap_activations: bitwise-equal training, dedup, exclude, no_grad, retain_graph."""

from __future__ import annotations

import time

import pytest
import torch
from _late_transport import LateFactory
from _swap_models import (
    InplaceViews,
    assert_bitwise,
    isensee,
    isensee_split,
    monai_net,
    train_steps,
)

from swapseg.errors import InputError
from swapseg.offload import SwapPolicy, SwapStats, swap_activations
from swapseg.offload.tracker import scope_matches

ARCHS = {"isensee": isensee, "isensee_split": isensee_split, "monai_dynunet": monai_net,
         "inplace_views": InplaceViews}


def _swap(policy, workers=1, transport=None):
    return lambda m: swap_activations(m, policy, workers=workers, transport=transport)


@pytest.fixture(scope="module")
def baselines():
    return {name: train_steps(make, _swap(None)) for name, make in ARCHS.items()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tier", ["host", "disk", "late"])
def test_bitwise_three_steps(baselines, arch, tier, tmp_path):
    """``late``: every copy finishes after a random delay, in shuffled order."""
    late = LateFactory(seed=len(arch)) if tier == "late" else None
    policy = SwapPolicy(tier="host" if late else tier, prefetch=2,
                        disk_dir=str(tmp_path) if tier == "disk" else None)
    run = train_steps(ARCHS[arch], _swap(policy, transport=late))
    assert_bitwise(baselines[arch], run)
    for st in run[3]:
        assert st.swapped > 0 and st.bytes_out > 0
        assert st.packed == st.swapped + st.deduplicated + st.kept
        assert st.device_bytes == 0  # nothing held after backward
    if late:
        assert len(late.made) == 3 and all(tr.out_of_order() for tr in late.made)
        assert all(tr.pool.free_bytes == tr.pool.allocated_bytes for tr in late.made)


def test_bitwise_inline_transport_and_long_prefetch(baselines):
    run = train_steps(isensee, _swap(SwapPolicy(prefetch=50), workers=0))
    assert_bitwise(baselines["isensee"], run)
    for st in run[3]:  # copies finish at pack, so every swapped storage comes back once
        assert st.bytes_in == st.bytes_out > 0


def test_dropout_really_on(baselines):
    """Without reseeding, dropout makes runs differ, so the bitwise test is not vacuous."""
    torch.manual_seed(5)
    model = isensee().train()
    x = torch.randn(1, 2, 16, 16, 16)
    a = model(x)
    b = model(x)
    assert not torch.equal(a, b)


def test_params_never_swapped():
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    with swap_activations(model, SwapPolicy(), workers=0) as st:
        model(x).sum().backward()
    n_params = sum(1 for _ in model.parameters())
    # every conv and norm weight is saved at least once; all of them are kept
    assert st.kept >= sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert st.kept_bytes == 0  # kept params are not activation entries
    assert n_params > 0


def test_dedup_views_and_shared_storage():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with swap_activations(lin, SwapPolicy(), workers=0) as st:
        h = lin(x).exp()          # exp saves its result h
        a = h[:2] * h[2:]         # mul saves both views of h's storage
        a.sum().backward()
    assert st.deduplicated >= 2
    assert st.bytes_out < sum([x.numel() * 4, 32 * 4 * 3])  # h moved once, not three times
    ref_x = x.grad.clone()
    x.grad = None
    h = lin(x).exp()
    (h[:2] * h[2:]).sum().backward()
    assert torch.equal(ref_x, x.grad)


def test_dedup_key_never_outlives_storage():
    """A freed storage whose address is reused must not match the old entry."""
    x = torch.randn(1000, requires_grad=True)
    m = torch.nn.Identity()
    with swap_activations(m, SwapPolicy(), workers=0):
        outs = []
        for k in range(20):
            t = (x * (k + 1)).detach()            # same size each time: address reuse
            t.requires_grad_(True)
            outs.append((t.sin(), t, k))
            del t
        for y, t, k in outs:
            y.sum().backward()
            assert torch.equal(t.grad, (x.detach() * (k + 1)).cos())


def test_exclude_honoured_per_scope():
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    policy = SwapPolicy(exclude=("decoder.*",))
    with swap_activations(model, policy, workers=0) as st:
        model(x).sum().backward()
    dec = {k: v for k, v in st.by_scope.items() if scope_matches(k, ("decoder.*",))}
    enc = {k: v for k, v in st.by_scope.items() if k.startswith("encoder")}
    assert dec and enc
    assert sum(v.swapped for v in dec.values()) == 0
    assert sum(v.bytes_out for v in dec.values()) == 0
    assert sum(v.kept_bytes for v in dec.values()) > 0
    assert sum(v.swapped for v in enc.values()) > 0
    assert st.bytes_out == sum(v.bytes_out for v in st.by_scope.values())


def test_n_tensors_and_min_bytes():
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    with swap_activations(model, SwapPolicy(n_tensors=7), workers=0) as st:
        model(x).sum().backward()
    assert st.swapped == 7
    with swap_activations(model, SwapPolicy(min_bytes=40_000), workers=0) as st:
        model(x).sum().backward()
    assert 0 < st.swapped < st.swapped + st.kept
    assert st.bytes_out >= 40_000 * st.swapped


def test_no_grad_does_nothing():
    model = isensee().eval()
    x = torch.randn(1, 2, 16, 16, 16)

    def timed() -> tuple[float, torch.Tensor]:
        # CPU time of this thread, one intra-op thread: waiting for a busy machine's
        # cores does not count, only the work done
        t0 = time.thread_time()
        out = model(x)
        return time.thread_time() - t0, out

    plain, hooked = [], []
    policy = SwapPolicy(swap_branches=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ref = model(x)
            for _ in range(9):  # interleaved, best of 9
                plain.append(timed()[0])
                with swap_activations(model, policy, workers=0) as st:
                    dt, out = timed()
                    hooked.append(dt)
                    assert torch.equal(ref, out)
                    assert st.as_dict() == SwapStats().as_dict()
    finally:
        torch.set_num_threads(threads)
    print(f"no_grad forward: {min(plain) * 1e3:.1f} ms plain, {min(hooked) * 1e3:.1f} ms hooked")
    assert min(hooked) < 1.2 * min(plain) + 0.005  # hooks only push/pop scope names


@pytest.mark.parametrize("late", [False, True])
def test_retain_graph_second_backward(late):
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    torch.manual_seed(3)
    loss = model(x).square().mean()
    loss.backward(retain_graph=True)
    loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    factory = LateFactory(seed=7) if late else None
    with swap_activations(model, SwapPolicy(prefetch=3), transport=factory) as st:
        torch.manual_seed(3)
        loss = model(x).square().mean()
        loss.backward(retain_graph=True)
        first_in = st.bytes_in
        loss.backward()
    for a, p in zip(ref, model.parameters(), strict=True):
        assert torch.equal(a, p.grad)
    # the first backward may still find sources whose copy-out is in flight; by the
    # second, every storage lives only on the host and comes back
    assert st.backwards == 2 and st.bytes_in - first_in >= st.bytes_out > 0
    assert st.device_bytes == 0


def test_autograd_grad_partial_and_inplace_detection():
    x = torch.randn(50, requires_grad=True)
    with swap_activations(torch.nn.Identity(), SwapPolicy(), workers=0):
        y = x.exp()
        y.add_(1)  # modifies a saved tensor: torch would refuse at backward
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_policy_none_is_null_context():
    model = isensee()
    with swap_activations(model, None) as st:
        model(torch.randn(1, 2, 16, 16, 16)).sum().backward()
    assert isinstance(st, SwapStats) and st.packed == 0 and st.as_dict()["by_scope"] == {}


def test_inflight_bound_makes_forward_wait():
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)

    def peak(**kw) -> int:
        with swap_activations(model, SwapPolicy(prefetch=1), **kw) as st:
            model(x).square().mean().backward()
        return st.peak_device_bytes

    inline = peak(workers=0)
    assert peak(workers=1, max_inflight_bytes=0) == inline


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("scopes,mode,branches", [(("encoder.*",), "full", True),
                                                  (("*",), "speed", False)])
def test_composes_with_recompute(baselines, scopes, mode, branches, late):
    """Hybrid plans: checkpointed scopes inside a swap context stay bitwise equal."""
    import contextlib

    from swapseg.offload.recompute import RecomputePolicy, recompute

    @contextlib.contextmanager
    def hybrid(model):
        policy = SwapPolicy(prefetch=2, swap_branches=branches)
        factory = LateFactory(seed=3) if late else None
        with swap_activations(model, policy, transport=factory) as st, \
                recompute(model, RecomputePolicy(scopes, mode)):
            yield st

    run = train_steps(isensee, hybrid, one_context=True)
    assert_bitwise(baselines["isensee"], run)
    assert run[3][-1].swapped > 0 and run[3][-1].device_bytes == 0


class _Stash(torch.autograd.Function):
    """Its backward keeps the saved tensor: a reloaded copy that escapes the engine."""

    kept: list = []

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        _Stash.kept.append(x)
        return g * 2


def test_escaped_reload_is_never_recycled():
    lin = torch.nn.Linear(64, 64)
    expected = []
    _Stash.kept.clear()
    with swap_activations(lin, SwapPolicy(), workers=0):
        for k in range(4):
            h = lin(torch.full((256, 64), float(k))).tanh()
            expected.append(h.detach().clone())
            _Stash.apply(h).sum().backward()
    assert len(_Stash.kept) == 4
    for got, want in zip(_Stash.kept, expected, strict=True):
        assert torch.equal(got, want)


def test_the_in_flight_bound_comes_from_the_policy_or_the_tier():
    from swapseg.offload.engine import DISK_INFLIGHT_BYTES, inflight_bound
    assert inflight_bound(SwapPolicy(tier="disk")) == DISK_INFLIGHT_BYTES
    assert inflight_bound(SwapPolicy(tier="host")) is None
    assert inflight_bound(SwapPolicy(tier="disk", max_inflight_bytes=2**31)) == 2**31
    assert inflight_bound(SwapPolicy(tier="host", max_inflight_bytes=0)) == 0
    with pytest.raises(InputError, match="max_inflight_bytes"):
        SwapPolicy(max_inflight_bytes=-2)
