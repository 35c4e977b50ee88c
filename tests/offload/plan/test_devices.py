import pytest

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.plan.devices import PROFILES, get_profile, measure_local


def test_named_profiles_cite_sources():
    assert set(PROFILES) == {"p100-nvlink", "v100-pcie3", "a100-pcie4", "h100-pcie5", "h200"}
    p100 = PROFILES["p100-nvlink"]
    assert p100.memory_bytes == 16 * 2**30
    assert p100.d2h_bytes_per_s == pytest.approx(0.8 * 40e9)  # NVLink 1.0, 40 GB/s each way
    for p in PROFILES.values():
        assert any("link" in k for k in p.sources) and "efficiency" in p.sources
        assert p.flops_per_s > 1e12 and p.h2d_bytes_per_s > 1e9


def test_unknown_device_and_local_without_model():
    with pytest.raises(InputError, match="unknown device"):
        get_profile("tpu")
    with pytest.raises(InputError, match="model"):
        get_profile("local")


def test_local_profile_is_measured():
    p = measure_local(Isensee3DUNet(base_filters=4, depth=3), side=16,
                      probe_bytes=8 * 2**20)
    assert p.name == "local" and p.cpu_conv_workspace
    assert 1e7 < p.flops_per_s < 1e14
    assert p.mem_bytes_per_s > 1e7 and p.h2d_bytes_per_s > 1e7
    assert "measured" in p.sources["flops_per_s"]


def test_calibrated_local_profile_has_conv_rates():
    from swapseg.offload.plan.devices import calibrate_step
    model = Isensee3DUNet(base_filters=4, depth=3)
    c = calibrate_step(model, (1, 4, 16, 16, 16))
    assert c["fwd"] > 1e6 and c["bwd"] > 1e6 and c["mem"] > 1e5 and c["wall_s"] > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU error")
def test_local_cuda_profile_needs_a_gpu():
    with pytest.raises(InputError, match="CUDA"):
        measure_local(Isensee3DUNet(base_filters=4, depth=3), tier="cuda")
