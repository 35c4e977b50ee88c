import pytest
import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import apply_plan
from swapseg.offload.policy import SwapPolicy
from swapseg.planner import choose_plan
from swapseg.planner.profiles import PROFILES
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step

SHAPE = (1, 4, 8, 12, 16)


def test_choose_plan_fits_and_errors():
    model = Isensee3DUNet(base_filters=4, depth=3)
    tr = trace_step(model, SHAPE)
    dev = PROFILES["p100-nvlink"]
    keep = simulate(tr, dev).peak_bytes
    low = simulate(tr, dev, SwapPolicy()).peak_bytes
    budget = int((low + keep) / 2 / 0.9)
    plan = choose_plan(model, SHAPE, "p100-nvlink", budget)
    assert plan.name and (plan.swap or plan.recompute)
    assert simulate(tr, dev, plan.swap, plan.recompute).peak_bytes <= budget * 0.9
    assert choose_plan(model, SHAPE, dev, 10 * keep).name == "keep-all"
    with pytest.raises(InputError, match="missing"):
        choose_plan(model, SHAPE, dev, tr.persistent_bytes)


def _fits(model, shape, loss_fn=None):
    """choose_plan on a budget between the lowest peak and keep-all: it must swap or
    recompute, and its predicted peak must fit."""
    tr = trace_step(model, shape, loss_fn)
    dev = PROFILES["a100-pcie4"]
    keep = simulate(tr, dev).peak_bytes
    low = simulate(tr, dev, SwapPolicy()).peak_bytes
    assert low < keep
    budget = int((low + keep) / 2 / 0.9)
    plan = choose_plan(model, shape, dev, budget, loss_fn)
    assert plan.swap or plan.recompute
    assert simulate(tr, dev, plan.swap, plan.recompute).peak_bytes <= budget * 0.9
    return plan


def test_choose_plan_plans_a_plain_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))
    plan = _fits(model, (1, 2, 9, 10, 11))
    with apply_plan(model, plan):  # the plan's globs name this model's modules
        model(torch.randn(1, 2, 9, 10, 11)).square().mean().backward()


def test_choose_plan_plans_monai_segresnet():
    nets = pytest.importorskip("monai.networks.nets")
    model = nets.SegResNet(spatial_dims=3, in_channels=2, out_channels=2, init_filters=8)
    plan = _fits(model, (1, 2, 16, 16, 16), lambda out: out.sigmoid().mean())
    assert "decoder" not in plan.name  # SegResNet has no module of that name


def test_choose_plan_under_bf16_autocast_counts_smaller_bytes():
    model = Isensee3DUNet(base_filters=4, depth=3)
    fp32 = trace_step(model, SHAPE).summary()["saved_bytes"]
    bf16 = trace_step(model, SHAPE, autocast_dtype=torch.bfloat16).summary()["saved_bytes"]
    assert bf16 < 0.8 * fp32
    plan = choose_plan(model, SHAPE, "p100-nvlink", 10**9, autocast_dtype=torch.bfloat16)
    assert plan.name == "keep-all"


def test_choose_plan_leaves_the_rng_stream_alone():
    model = Isensee3DUNet(base_filters=4, depth=3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    choose_plan(model, SHAPE, "local", 10**10)  # measures this CPU, with one real step
    assert torch.equal(torch.rand(3), expected)
