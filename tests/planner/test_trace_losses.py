"""Any loss, any target: closed-over real targets, target descriptions, and losses with
data-dependent Python (MONAI's Dice family) trace, plan and run."""

import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn

from swapseg.errors import InputError
from swapseg.offload import apply_plan
from swapseg.offload.policy import SwapPolicy
from swapseg.planner import choose_plan
from swapseg.planner.loss import LossSaved, bind_target, measure_loss_saved
from swapseg.planner.profiles import PROFILES
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step

SHAPE = (1, 2, 13, 14, 15)
LABELS = (1, 1, 13, 14, 15)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))


def _real_saved_bytes(model, x, loss_fn):
    """Bytes of the unique non-parameter storages autograd saves in a real step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, held = {}, []  # held: no storage is freed, so no address is reused

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
            held.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(model(x)).backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _labels():
    return torch.randint(0, 3, LABELS, generator=torch.Generator().manual_seed(1))


def test_a_loss_closing_over_a_real_target_traces_as_a_real_step_saves():
    model, target = _model(), _labels()

    def loss_fn(out):
        return nn.functional.cross_entropy(out, target[:, 0])

    tr = trace_step(model, SHAPE, loss_fn)
    assert tr.summary()["saved_bytes"] == _real_saved_bytes(model, torch.randn(SHAPE),
                                                            loss_fn)


def test_dice_ce_with_a_real_target_counts_what_the_real_loss_saves():
    model, target = _model(), _labels()
    dice = DiceCELoss(to_onehot_y=True, softmax=True)
    real = _real_saved_bytes(model, torch.randn(SHAPE), lambda o: dice(o, target))
    closed = trace_step(model, SHAPE, lambda o: dice(o, target)).summary()["saved_bytes"]
    # measured on real tensors at the full shape (the small one mismatches the target)
    assert closed == real
    # described target: measured at 8^3 and scaled; the loss's few scalars do not scale
    described = trace_step(model, SHAPE, dice, target=(LABELS, torch.int64))
    assert described.summary()["saved_bytes"] == pytest.approx(real, rel=0.01)
    built = trace_step(model, SHAPE, dice,
                       target=lambda o: torch.zeros_like(o[:, :1], dtype=torch.int64))
    assert built.summary()["saved_bytes"] == described.summary()["saved_bytes"]


def test_measured_loss_saved_bytes_per_output_byte():
    dice = DiceCELoss(softmax=True)
    out = torch.empty(1, 3, 20, 20, 20, requires_grad=True)
    got = measure_loss_saved(bind_target(dice, ((1, 3, 20, 20, 20), torch.float32)), out)
    assert got.shape == (1, 3, 8, 8, 8)
    assert got.extra_per_out_byte > 1  # softmax, products, the one-hot: several outputs' worth
    with pytest.raises(InputError, match="fails on real ones too"):
        measure_loss_saved(lambda o: o.sum() + torch.ones(7), [torch.empty(2, 3)])
    with pytest.raises(InputError, match=">= 0"):
        LossSaved(-1.0, False, (1,))


def test_bad_target_descriptions_are_input_errors():
    with pytest.raises(InputError, match="no loss"):
        bind_target(None, (LABELS, torch.int64))
    with pytest.raises(InputError, match="torch dtype"):
        bind_target(nn.functional.mse_loss, (LABELS, "int64"))
    with pytest.raises(InputError, match="fewer dimensions"):
        trace_step(_model(), SHAPE, nn.functional.mse_loss, target=((3,), torch.float32))


def test_choose_plan_with_dice_ce_and_a_real_target_plans_and_the_plan_runs():
    model, target = _model(), _labels()
    dice = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss_fn(out):
        return dice(out, target)

    dev = PROFILES["a100-pcie4"]
    tr = trace_step(model, SHAPE, loss_fn)
    keep = simulate(tr, dev).peak_bytes
    low = simulate(tr, dev, SwapPolicy(tier="host")).peak_bytes
    assert low < keep
    budget = int((low + keep) / 2 / 0.9)
    plan = choose_plan(model, SHAPE, dev, budget_bytes=budget, loss_fn=loss_fn, tier="host")
    assert plan.swap or plan.recompute
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    loss_fn(model(x)).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with apply_plan(model, plan) as st:
        loss_fn(model(x)).backward()
    assert st.swapped > 0 or plan.recompute
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), want, strict=True))
