"""Per-storage plans (``SwapPolicy.storages``): the engine swaps exactly the storages the
planner named, and training stays bitwise equal to no plan."""

from __future__ import annotations

import pytest
import torch
from _swap_models import InplaceViews, assert_bitwise, isensee, monai_net, train_steps

from swapseg.errors import InputError
from swapseg.offload import SwapPolicy, swap_activations
from swapseg.planner.profiles import PROFILES
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step

ARCHS = {"isensee": isensee, "monai_dynunet": monai_net, "inplace_views": InplaceViews}
SHAPE = (1, 2, 16, 16, 16)


def _loss(out: torch.Tensor) -> torch.Tensor:
    """train_steps' loss against a target of the output's shape (values change no size)."""
    return (out.sigmoid() - torch.zeros_like(out)).square().mean()


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_per_storage_plan_is_bitwise_and_exact(arch, tier, tmp_path):
    torch.manual_seed(1234)
    trace = trace_step(ARCHS[arch](), SHAPE, _loss)
    n = len(trace.unique_saved())
    chosen = tuple(range(1, n, 3))  # every third storage: kept ones between swapped ones
    policy = SwapPolicy(storages=chosen, prefetch=2, tier=tier,
                        disk_dir=str(tmp_path) if tier == "disk" else None)
    gpu = policy.replace(tier="cuda", disk_dir=None)  # what the planner counts, on a GPU
    predicted = simulate(trace, PROFILES["a100-pcie4"], gpu)
    base = train_steps(ARCHS[arch], lambda m: swap_activations(m, None))
    run = train_steps(ARCHS[arch], lambda m: swap_activations(m, policy, workers=1))
    assert_bitwise(base, run)
    for st in run[3]:
        assert st.storages == n  # the engine numbers the storages the planner traced
        assert st.swapped == len(chosen) == predicted.swapped_tensors
        assert st.bytes_out == predicted.swapped_bytes


def test_storages_field_is_validated():
    for bad in [(-1,), (3, 1), (2, 2)]:
        with pytest.raises(InputError, match="storages"):
            SwapPolicy(storages=bad)
    with pytest.raises(InputError, match="would do nothing"):
        SwapPolicy(storages=(1,), exclude=("a",))
    p = SwapPolicy(storages=[0, 4, 9], prefetch=3, max_inflight_bytes=2**30)
    assert p.storages == (0, 4, 9) and SwapPolicy.from_json(p.to_json()) == p
