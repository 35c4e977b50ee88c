import dataclasses

import pytest
import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import apply_plan
from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.planner import choose, choose_plan, plan_memory
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
    plan = choose_plan(model, SHAPE, "p100-nvlink", budget_bytes=budget)
    assert plan.name and (plan.swap or plan.recompute)
    assert simulate(tr, dev, plan.swap, plan.recompute).peak_bytes <= budget * 0.9
    assert choose_plan(model, SHAPE, dev, budget_bytes=10 * keep).name == "keep-all"
    with pytest.raises(InputError, match="missing"):
        choose_plan(model, SHAPE, dev, budget_bytes=tr.persistent_bytes)


def _fits(model, shape, loss_fn=None):
    """choose_plan on a budget between the lowest peak and keep-all: it must swap or
    recompute, and its predicted peak must fit."""
    tr = trace_step(model, shape, loss_fn)
    dev = PROFILES["a100-pcie4"]
    keep = simulate(tr, dev).peak_bytes
    low = simulate(tr, dev, SwapPolicy()).peak_bytes
    assert low < keep
    budget = int((low + keep) / 2 / 0.9)
    plan = choose_plan(model, shape, dev, budget_bytes=budget, loss_fn=loss_fn)
    assert plan.swap or plan.recompute
    assert simulate(tr, dev, plan.swap, plan.recompute).peak_bytes <= budget * 0.9
    return plan


def test_choose_plan_plans_a_plain_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))
    plan = _fits(model, (1, 2, 9, 10, 11))
    assert plan.swap is None or plan.swap.tier == "cuda"  # made for the profile's GPU
    if plan.swap is not None:  # run here on the CPU's host tier
        plan = plan.replace(swap=plan.swap.replace(tier="host"))
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
    plan = choose_plan(model, SHAPE, "p100-nvlink", budget_bytes=10**9,
                       autocast_dtype=torch.bfloat16)
    assert plan.name == "keep-all"


def test_choose_plan_leaves_the_rng_stream_alone():
    model = Isensee3DUNet(base_filters=4, depth=3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    choose_plan(model, SHAPE, "local", budget_bytes=10**10)  # measures this CPU, with one real step
    assert torch.equal(torch.rand(3), expected)


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))


ODD = (1, 2, 9, 10, 11)


def test_plan_memory_returns_its_evidence_from_one_trace(monkeypatch):
    calls = []
    real = choose.trace_step
    monkeypatch.setattr(choose, "trace_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _sequential()
    dev = PROFILES["a100-pcie4"]
    tr = real(model, ODD)
    keep, low = simulate(tr, dev).peak_bytes, simulate(tr, dev, SwapPolicy()).peak_bytes
    budget = int((low + keep) / 2 / 0.9)
    found = plan_memory(model, ODD, dev, budget_bytes=budget)
    assert len(calls) == 1  # one trace for the search, the prediction and keep-all
    assert found.fits and found.profile is dev
    assert found.keep_all == found.rows[0].result and found.rows[0].name == "keep-all"
    chosen = found.search.chosen
    assert found.predicted == chosen.result and found.plan.name == chosen.name
    assert found.predicted.peak_bytes <= budget * 0.9 and found.plan.name != "keep-all"
    assert found.plan.model_class == "torch.nn.modules.container:Sequential"
    assert found.plan.swap is None or found.plan.swap.tier == "cuda"  # concrete for a GPU
    assert MemoryPlan.from_json(found.plan.to_json()) == found.plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.rows[0].fits = False  # type: ignore[misc]
    assert isinstance(found.rows, tuple)


def test_plans_are_concrete_for_a_cpu_profile():
    model = _sequential()
    cpu = dataclasses.replace(PROFILES["a100-pcie4"], unified_memory=True)
    tr = trace_step(model, ODD)
    keep, low = simulate(tr, cpu).peak_bytes, simulate(tr, cpu, SwapPolicy()).peak_bytes
    found = plan_memory(model, ODD, cpu, budget_bytes=int((low + keep) / 2 / 0.9))
    assert all(r.swap is None or r.swap.tier == "disk" for r in found.rows)


def test_budget_is_a_required_keyword_and_takes_sizes():
    model = _sequential()
    with pytest.raises(TypeError):
        choose_plan(model, ODD, "a100-pcie4", 10**9)  # type: ignore[misc]
    with pytest.raises(TypeError):
        choose_plan(model, ODD, "a100-pcie4")  # type: ignore[call-arg]
    assert choose_plan(model, ODD, "a100-pcie4", budget_bytes="1GiB").name == "keep-all"
    with pytest.raises(InputError, match="budget_bytes"):
        choose_plan(model, ODD, "a100-pcie4", budget_bytes="lots")
    with pytest.raises(InputError, match="positive"):
        choose_plan(model, ODD, "a100-pcie4", budget_bytes=0)


def test_a_shape_without_its_batch_axis_is_one_line():
    with pytest.raises(InputError, match=r"add the batch axis, e\.g\. \(1, 2, 9, 10, 11\)"):
        choose_plan(_sequential(), ODD[1:], "a100-pcie4", budget_bytes="1GiB")


def test_a_shape_the_model_cannot_take_is_one_line_without_log(capfd):
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Linear(7, 3))
    with pytest.raises(InputError, match="cannot run a step at input 1x2x9x10x11") as info:
        choose_plan(model, ODD, "a100-pcie4", budget_bytes="1GiB")
    assert len(str(info.value).splitlines()) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "fake_tensor" not in err


def test_no_fit_names_the_floor_and_what_it_holds():
    model = _sequential()
    tr = trace_step(model, ODD)
    with pytest.raises(InputError) as info:
        choose_plan(model, ODD, "a100-pcie4", budget_bytes=tr.persistent_bytes + 1)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    for words in ("lowest reachable peak", "weights", "optimizer state", "gradients",
                  "saved activations left", "working set at its peak op", "missing"):
        assert words in msg
