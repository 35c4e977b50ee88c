import os

import pytest
from torch import nn

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.planner.calibrate import calibrate_step
from swapseg.planner.local import calibration_shape, get_profile, measure_local
from swapseg.planner.profiles import PROFILES


def test_named_profiles_cite_sources():
    assert set(PROFILES) == {"p100-nvlink", "v100-pcie3", "a100-pcie4", "h100-pcie5", "h200"}
    p100 = PROFILES["p100-nvlink"]
    assert p100.memory_bytes == 16 * 2**30
    assert p100.d2h_bytes_per_s == pytest.approx(0.8 * 40e9)  # NVLink 1.0, 40 GB/s each way
    for p in PROFILES.values():
        assert any("link" in k for k in p.sources) and "efficiency" in p.sources
        assert p.flops_per_s > 1e12 and p.h2d_bytes_per_s > 1e9


def test_unknown_device_and_local_calibration_without_model():
    with pytest.raises(InputError, match="unknown device profile 'tpu'"):
        get_profile("tpu")
    with pytest.raises(InputError, match="model"):
        get_profile("local", calibrate_shape=(1, 4, 16, 16, 16))


def test_local_profile_is_measured_without_any_model():
    p = measure_local(probe_bytes=8 * 2**20, matmul_n=128)
    assert p.name == "local" and p.cpu_conv_workspace and not p.conv_flops_per_s
    assert 1e7 < p.flops_per_s < 1e14
    assert p.mem_bytes_per_s > 1e7 and p.h2d_bytes_per_s > 1e7
    assert "measured" in p.sources["flops_per_s"] and "matrix" in p.sources["flops_per_s"]


def test_calibration_of_a_model_without_convolutions():
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
    c = calibrate_step(model, (16, 32))
    assert "fwd" not in c and "bwd" not in c  # nothing to time: no rate made up
    assert c["mem"] > 1e3 and c["wall_s"] > 0


def test_calibration_at_a_shape_the_model_refuses_names_it():
    with pytest.raises(InputError, match=r"calibration step of Isensee3DUNet at 1x4x10x10x10"):
        calibrate_step(Isensee3DUNet(base_filters=4, depth=3), (1, 4, 10, 10, 10))


@pytest.mark.parametrize("shape, small", [
    ((1, 4, 192, 192, 192), (1, 4, 64, 64, 64)),
    ((2, 1, 128, 160, 144), (2, 1, 64, 64, 64)),
    ((1, 4, 60, 64, 64), (1, 4, 60, 64, 64)),   # 60 = 4 * 15: a multiple of 4 stays
    ((1, 4, 36, 36, 36), (1, 4, 36, 36, 36)),
    ((1, 3, 100, 100), (1, 3, 64, 64)),         # 2D
])
def test_calibration_shape_keeps_divisibility(shape, small):
    assert calibration_shape(shape) == small


def test_calibrated_local_profile_has_conv_rates():
    model = Isensee3DUNet(base_filters=4, depth=3)
    c = calibrate_step(model, (1, 4, 16, 16, 16))
    assert c["fwd"] > 1e6 and c["bwd"] > 1e6 and c["mem"] > 1e5 and c["wall_s"] > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU error")
def test_local_cuda_profile_needs_a_gpu():
    with pytest.raises(InputError, match="CUDA"):
        measure_local(tier="cuda")


def test_the_disk_tier_probe_reports_what_its_transport_did(tmp_path, monkeypatch):
    from swapseg.offload.transport import disk as disk_mod
    from swapseg.planner.diskprobe import tier_rates

    r = tier_rates(4 * 2**20, str(tmp_path))
    assert r["write"] > 1e6 and r["read"] > 1e6 and r["write_cpu"] > 0 and r["read_cpu"] > 0
    assert os.listdir(tmp_path) == []  # the probe's file had no name and is gone
    monkeypatch.setattr(disk_mod, "_set_direct", lambda fd, on: not on)  # no O_DIRECT here
    assert tier_rates(4 * 2**20, str(tmp_path))["direct"] is False
