"""Models that checkpoint inside their forward: traced exactly, planned, and run with the
engine and the user's checkpointing together, gradients bitwise equal to no swapping."""

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn
from torch.utils.checkpoint import checkpoint

from swapseg.offload import apply_plan
from swapseg.offload.measure import default_loss
from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.planner import choose_plan
from swapseg.planner.profiles import PROFILES
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step

SHAPE = (1, 2, 11, 12, 13)


class Checkpointed(nn.Module):
    """A stem, a checkpointed middle (with dropout: the checkpoint replays its RNG) and a
    head."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.stem = nn.Conv3d(2, 4, 3, padding=1)
        self.mid = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.GroupNorm(2, 4),
                                 nn.LeakyReLU(0.01), nn.Dropout3d(0.2),
                                 nn.Conv3d(4, 4, 3, padding=1))
        self.head = nn.Conv3d(4, 3, 1)
        self.reentrant = reentrant

    def forward(self, x):
        return self.head(checkpoint(self.mid, self.stem(x), use_reentrant=self.reentrant))


def _real_saved_bytes(model, x):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, held = {}, []  # held: no storage is freed, so no address is reused

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
            held.append(t)
        return t

    torch.manual_seed(3)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        default_loss(model(x)).backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _steps(model, plan, x, n=3):
    """Gradients of ``n`` Adam steps under ``plan`` (None: no swapping), seeded alike."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    grads, swapped = [], 0
    for i in range(n):
        torch.manual_seed(10 + i)
        opt.zero_grad(set_to_none=True)
        with apply_plan(model, plan) as st:
            default_loss(model(x)).backward()
        swapped += st.swapped
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads, swapped


def _plans_and_runs(model, shape, tier):
    """choose_plan at a budget between the lowest peak and keep-all (at keep-all when
    swapping lowers nothing, the peak being the checkpoint's rerun in backward); the
    chosen plan and swap-all run 3 steps with gradients bitwise equal to no swapping."""
    tr = trace_step(model, shape)
    dev = PROFILES["a100-pcie4"]
    keep = simulate(tr, dev).peak_bytes
    low = simulate(tr, dev, SwapPolicy(tier=tier)).peak_bytes
    assert low <= keep
    plan = choose_plan(model, shape, dev, budget_bytes=int((low + keep) / 2 / 0.9) + 1, tier=tier)
    assert simulate(tr, dev, plan.swap, plan.recompute).peak_bytes <= (low + keep) / 2 + 1
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)
    want, _ = _steps(model, None, x)
    swap_all = MemoryPlan(swap=SwapPolicy(tier=tier, prefetch=2), name="swap-all")
    for p in (plan, swap_all):
        got, swapped = _steps(copy.deepcopy(twin), p, x)
        assert swapped > 0 or p is plan and not plan.swap
        for gs, ws in zip(got, want, strict=True):
            assert all(torch.equal(g, w) for g, w in zip(gs, ws, strict=True))
    return low < keep


@pytest.mark.parametrize("reentrant", [True, False])
def test_own_checkpointed_model_traces_exactly(reentrant):
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    traced = trace_step(model, SHAPE).summary()["saved_bytes"]
    assert traced == _real_saved_bytes(model, torch.randn(SHAPE))
    # the checkpointed middle saves its tensors in backward, so the peak is lower than
    # the same model's unchecked
    plain = nn.Sequential(model.stem, model.mid, model.head)
    dev = PROFILES["a100-pcie4"]
    assert simulate(trace_step(model, SHAPE), dev).peak_bytes \
        < simulate(trace_step(plain, SHAPE), dev).peak_bytes


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_own_checkpointed_model_plans_and_runs_with_the_engine(reentrant, tier):
    torch.manual_seed(0)
    assert _plans_and_runs(Checkpointed(reentrant), SHAPE, tier) or not reentrant


def _swin(spatial_dims):
    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1),
                     spatial_dims=spatial_dims, use_checkpoint=True)


def test_swin_unetr_2d_with_use_checkpoint_traces_plans_and_runs():
    model, shape = _swin(2), (1, 1, 64, 64)
    tr = trace_step(model, shape)
    assert tr.summary()["saved_bytes"] == _real_saved_bytes(model, torch.randn(shape))
    dev = PROFILES["a100-pcie4"]
    keep = simulate(tr, dev).peak_bytes
    low = simulate(tr, dev, SwapPolicy(tier="host")).peak_bytes
    plan = choose_plan(model, shape, dev, budget_bytes=int((low + keep) / 2 / 0.9) + 1, tier="host")
    assert plan.swap is not None and low < keep
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)
    want, _ = _steps(model, None, x, n=2)
    got, swapped = _steps(twin, plan, x, n=2)
    assert swapped > 0
    for gs, ws in zip(got, want, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(gs, ws, strict=True))


@pytest.mark.slow
def test_swin_unetr_3d_with_use_checkpoint_traces_plans_and_runs():
    """The issue's model in 3D. Its CPU step is not bitwise reproducible run to run even
    without swapping, so gradients are compared with a tolerance here."""
    model, shape = _swin(3), (1, 1, 64, 64, 64)
    assert trace_step(model, shape).summary()["saved_bytes"] \
        == _real_saved_bytes(model, torch.randn(shape))
    dev = PROFILES["a100-pcie4"]
    plan = choose_plan(model, shape, dev, budget_bytes=10 * 2**30, tier="host")
    assert plan.name == "keep-all"
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)
    want, _ = _steps(model, None, x, n=1)
    got, swapped = _steps(twin, MemoryPlan(swap=SwapPolicy(tier="host")), x, n=1)
    assert swapped > 0
    assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-6)
               for g, w in zip(got[0], want[0], strict=True))
