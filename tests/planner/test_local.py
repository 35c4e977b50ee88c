"""The local profile's calibration: a fixed-size network falls back to the shape to
predict, the user's real loss runs on real tensors, and kineto's lines stay off stderr."""

import os
import warnings

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR
from torch import nn

from swapseg.errors import InputError
from swapseg.planner import choose_plan, resolve_profile
from swapseg.planner.calibrate import calibrate_step
from swapseg.planner.local import measure_local


class FixedSize(nn.Module):
    """Adds a learned map of one input size, as a ViT's position embedding does."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.pos = nn.Parameter(torch.zeros(1, 3, side, side, side))

    def forward(self, x):
        return self.conv(x) + self.pos


def test_a_fixed_size_network_calibrates_at_the_shape_to_predict_and_says_so():
    model = FixedSize(80)
    with pytest.raises(InputError, match="calibration step of FixedSize at 1x2x64x64x64"):
        measure_local(model, tier="host", probe_bytes=8 * 2**20, matmul_n=64,
                      calibrate_shape=(1, 2, 64, 64, 64))
    with pytest.warns(UserWarning, match="calibrating at 1x2x80x80x80 instead"):
        p = measure_local(model, tier="host", probe_bytes=8 * 2**20, matmul_n=64,
                          calibrate_shape=(1, 2, 64, 64, 64),
                          fallback_shape=(1, 2, 80, 80, 80))
    assert "1x2x80x80x80" in p.sources["calibration"] and p.conv_flops_per_s


def test_choose_plan_on_local_plans_a_fixed_size_network():
    model = FixedSize(80)
    with pytest.warns(UserWarning, match="instead"):
        plan = choose_plan(model, (1, 2, 80, 80, 80), "local", budget_bytes=2**34, tier="host")
    assert plan.name == "keep-all"


def _labels(shape):
    return torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0))


def test_local_calibration_runs_the_real_loss_with_its_target():
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1))
    dice = DiceCELoss(to_onehot_y=True, softmax=True)
    calls = []

    def loss_fn(out, target):
        calls.append((type(out).__name__, tuple(target.shape)))
        return dice(out, target)

    # described target: calibrated small, the target built at the small shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        p = resolve_profile("local", model, (1, 2, 80, 80, 80), "host",
                            lambda o: loss_fn(o, torch.zeros_like(o[:, :1], dtype=torch.int64)))
    assert "1x2x64x64x64" in p.sources["calibration"]
    assert ("Tensor", (1, 1, 64, 64, 64)) in calls  # real tensors, at the small shape
    # a closed-over full-size target fails at the small shape: the step runs full size
    full = _labels((1, 1, 80, 80, 80))
    with pytest.warns(UserWarning, match="calibrating at 1x2x80x80x80"):
        p = resolve_profile("local", model, (1, 2, 80, 80, 80), "host",
                            lambda o: dice(o, full))
    assert "1x2x80x80x80" in p.sources["calibration"]


def test_calibration_keeps_kineto_lines_off_stderr_and_passes_the_rest(capfd):
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1))

    def loss_fn(out):
        os.write(2, b"the user's own line\n")
        return out.square().mean()

    calibrate_step(model, (1, 2, 6, 7, 8), loss_fn)
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err and "USDT" not in err
    assert "the user's own line" in err


@pytest.mark.slow
def test_monai_unetr_built_for_one_size_plans_on_local():
    torch.manual_seed(0)
    model = UNETR(in_channels=1, out_channels=2, img_size=80, feature_size=8,
                  hidden_size=48, mlp_dim=96, num_heads=4)
    with pytest.warns(UserWarning, match="calibrating at 1x1x80x80x80 instead"):
        plan = choose_plan(model, (1, 1, 80, 80, 80), "local", budget_bytes=2**34, tier="host")
    assert plan.name == "keep-all"
