"""The cuda tier end to end on CPU, under the CUDA runtime double: training steps with
gradients bitwise equal to no swapping, on three architectures and several completion
orders; prefetch, swap_branches, recompute hybrids, an exception mid-backward, a graph
that outlives its context, and saved views (offset, non-contiguous, base not saved).

Every test also asserts that the double saw no race (``rt.races``), since a ``Race``
raised inside autograd's hooks may be swallowed or re-raised as another error.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from _cuda_double import CudaDoubleFactory, FakeCuda
from _swap_models import ConvNet, InplaceViews, assert_bitwise, isensee, train_steps
from torch import nn

from swapseg.offload import SwapPolicy, swap_activations
from swapseg.offload.recompute import RecomputePolicy, recompute

ARCHS = {"convnet": ConvNet, "inplace_views": InplaceViews, "isensee": isensee}
STEPS = {"convnet": 3, "inplace_views": 3, "isensee": 2}
CASES = [(a, s) for a in ("convnet", "inplace_views") for s in (0, 1, 2)] + \
    [("isensee", 0), ("isensee", 1)]


def _swap(policy, factory):
    return lambda m: swap_activations(m, policy, transport=factory)


def _pools_whole(factory) -> bool:
    return all(tr.pool.free_bytes == tr.pool.allocated_bytes for tr in factory.made)


@pytest.fixture(scope="module")
def baselines():
    return {name: train_steps(ARCHS[name], _swap(None, None), steps=STEPS[name])
            for name in ARCHS}


@pytest.mark.parametrize("arch,seed", CASES)
def test_bitwise_under_random_completion_orders(baselines, arch, seed):
    rt = FakeCuda(seed=seed, lazy=0.8)
    factory = CudaDoubleFactory(rt)
    with rt.active():
        run = train_steps(ARCHS[arch], _swap(SwapPolicy(prefetch=2), factory),
                          steps=STEPS[arch])
    assert_bitwise(baselines[arch], run)
    assert not rt.races
    for st in run[3]:
        assert st.swapped > 0 and st.bytes_in > 0 and st.device_bytes == 0
        # one pinned buffer per swapped storage, each rounded up to a power of two
        assert st.bytes_out <= st.host_reserved_bytes < 2 * st.bytes_out
    assert len(factory.made) == STEPS[arch] and _pools_whole(factory)


def test_completion_orders_differ_between_seeds():
    def schedule(seed):
        rt = FakeCuda(seed=seed, lazy=0.8)
        with rt.active():
            train_steps(ConvNet, _swap(SwapPolicy(prefetch=2), CudaDoubleFactory(rt)),
                        steps=1)
        return rt.schedule
    assert schedule(0) != schedule(1)


def test_swap_all_with_every_copy_as_late_as_possible(baselines):
    """Nothing runs until a wait or a synchronize forces it."""
    rt = FakeCuda(seed=5, lazy=1.0)
    with rt.active():
        run = train_steps(InplaceViews, _swap(SwapPolicy(prefetch=1), CudaDoubleFactory(rt)))
    assert_bitwise(baselines["inplace_views"], run)
    assert not rt.races and all(st.swapped > 0 for st in run[3])


def test_swap_branches_and_recompute_hybrid(baselines):
    rt = FakeCuda(seed=7, lazy=0.8)
    factory = CudaDoubleFactory(rt)

    @contextlib.contextmanager
    def hybrid(model):
        policy = SwapPolicy(prefetch=2, swap_branches=True)
        with swap_activations(model, policy, transport=factory) as st, \
                recompute(model, RecomputePolicy(("encoder.*",), "full")):
            yield st

    with rt.active():
        run = train_steps(isensee, hybrid, steps=2, one_context=True)
    assert_bitwise(baselines["isensee"], run)
    assert not rt.races
    assert run[3][-1].swapped > 0 and run[3][-1].branch_evictions > 0


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom mid-backward")


class _BoomNet(ConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        z = self.c2(_Boom.apply(y)).sigmoid()  # backward fails after c2's, before c1's
        return self.head(z * y)


def test_exception_mid_backward_leaves_no_copy_behind():
    rt = FakeCuda(seed=3, lazy=0.95)
    factory = CudaDoubleFactory(rt)
    torch.manual_seed(0)
    model = _BoomNet()
    x = torch.randn(1, 2, 9, 7, 5)
    with rt.active():
        with pytest.raises(RuntimeError, match="boom"):
            with swap_activations(model, SwapPolicy(prefetch=8), transport=factory) as st:
                model(x).square().mean().backward()
        rt.synchronize()
        assert st.swapped > 0 and st.device_bytes == 0
        run = train_steps(ConvNet, _swap(SwapPolicy(prefetch=2), factory), steps=1)
    assert not rt.races and _pools_whole(factory)
    assert run[3][0].swapped > 0


def test_graph_outliving_its_context():
    torch.manual_seed(2)
    model = isensee().eval()
    x = torch.randn(1, 2, 16, 16, 16)
    model(x).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    rt = FakeCuda(seed=4, lazy=0.9)
    factory = CudaDoubleFactory(rt)
    with rt.active():
        with swap_activations(model, SwapPolicy(prefetch=2), transport=factory) as st:
            loss = model(x).square().mean()
        loss.backward()  # after the context closed
        del loss
    for a, p in zip(ref, model.parameters(), strict=True):
        assert torch.equal(a, p.grad)
    assert not rt.races and st.device_bytes == 0 and _pools_whole(factory)


class _Views(nn.Module):
    """Saves an offset view, a non-contiguous view, and a view whose base is not saved."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 6, 3, padding=1)
        self.head = nn.Conv3d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.conv(x)                   # saved by nothing itself
        offset = base[:, 3:]                  # a view at a storage offset
        turned = base[:, :3].transpose(2, 4)  # a non-contiguous view
        y = torch.sin(offset) + torch.cos(turned).transpose(2, 4)
        return self.head(y)


def test_offset_non_contiguous_views_and_a_view_whose_base_is_not_saved():
    """TRL #7195 / axolotl #3833 (views made contiguous on the transfer stream) and
    DeepSpeed #8387 (a view whose base is not saved is skipped): the whole storage of
    ``base`` goes out once, on its side stream, and comes back whole."""
    base = train_steps(_Views, _swap(None, None), shape=(1, 2, 7, 5, 9))
    rt = FakeCuda(seed=9, lazy=0.0)  # copies run early: backward reloads every storage
    with rt.active():
        run = train_steps(_Views, _swap(SwapPolicy(prefetch=1), CudaDoubleFactory(rt)),
                          shape=(1, 2, 7, 5, 9))
    assert_bitwise(base, run)
    assert not rt.races
    feature_map = 6 * 7 * 5 * 9 * 4
    for st in run[3]:
        assert st.deduplicated >= 1  # the second view of base's storage
        assert st.bytes_out >= feature_map and st.bytes_in >= feature_map
