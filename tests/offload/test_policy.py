"""What a tier means on a device: one function, and plans made concrete by it."""

from __future__ import annotations

import pytest

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan, SwapPolicy, concrete_tier


def test_concrete_tier_is_what_frees_the_devices_memory() -> None:
    assert concrete_tier("auto", "cpu") == "disk"
    assert concrete_tier("auto", "cuda") == "cuda"
    assert concrete_tier("host", "cpu") == "host"
    assert concrete_tier("disk", "cuda") == "disk"
    with pytest.raises(InputError, match="needs CUDA"):
        concrete_tier("cuda", "cpu")
    with pytest.raises(InputError, match="tier must be"):
        concrete_tier("ram", "cpu")


def test_a_plan_made_concrete_names_the_tier_that_runs() -> None:
    plan = MemoryPlan(swap=SwapPolicy(prefetch=3), name="swap-all")
    cpu = plan.concrete("cpu")
    assert cpu.swap is not None and cpu.swap.tier == "disk" and cpu.swap.prefetch == 3
    assert plan.concrete("cuda").swap.tier == "cuda"
    kept = MemoryPlan(swap=SwapPolicy(tier="host"))
    assert kept.concrete("cpu") is kept
    assert MemoryPlan().concrete("cpu") == MemoryPlan()
