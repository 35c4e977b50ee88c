"""StepSwapper: one plan context per framework step, counters added up (no framework needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.integrations._plan import MemoryPlan, SwapPolicy, SwapStats, as_plan, parse_size
from swapseg.integrations.steps import StepSwapper, add_stats


def test_add_stats_sums_counts_keeps_max_peak_and_last_resident() -> None:
    total, a, b = SwapStats(), SwapStats(), SwapStats()
    a.count("enc", "swapped", 100)
    a.count("enc", "kept", 7)
    a.peak_device_bytes, a.device_bytes, a.steps = 300, 5, 1
    b.count("enc", "swapped", 40)
    b.count("dec", "deduplicated")
    b.peak_device_bytes, b.device_bytes, b.steps = 200, 0, 1
    add_stats(total, a)
    add_stats(total, b)
    assert (total.packed, total.swapped, total.kept, total.deduplicated) == (4, 2, 1, 1)
    assert (total.bytes_out, total.kept_bytes, total.steps) == (140, 7, 2)
    assert total.peak_device_bytes == 300 and total.device_bytes == 0
    assert total.by_scope["enc"].bytes_out == 140 and total.by_scope["dec"].deduplicated == 1


def _step(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_steps_swap_and_match_unswapped_gradients_bitwise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv3d(3, 1, 1))
    xs = [torch.randn(1, 2, 5, 7, 6) for _ in range(3)]
    swapper = StepSwapper(as_plan(SwapPolicy()))
    for x in xs:
        plain = _step(model, x)
        with swapper.step(model) as live:
            swapped = _step(model, x)
            assert live.swapped > 0
        assert all(torch.equal(p, q) for p, q in zip(plain, swapped, strict=True))
    assert swapper.stats.steps == 3 and swapper.stats.swapped > 0
    assert swapper.stats.bytes_in == swapper.stats.bytes_out and swapper.current is None
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_a_failed_step_closes_and_a_skipped_end_is_closed_by_the_next_begin() -> None:
    model = nn.Linear(3, 3)
    swapper = StepSwapper(MemoryPlan(swap=SwapPolicy()))
    with pytest.raises(ValueError), swapper.step(model):
        raise ValueError("boom")
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    swapper.begin(model)
    swapper.begin(model)  # the framework never called end() for the first
    swapper.end()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_as_plan_and_sizes() -> None:
    assert as_plan(None) == MemoryPlan()
    assert as_plan(SwapPolicy(prefetch=3)).swap == SwapPolicy(prefetch=3)
    with pytest.raises(InputError, match="SwapPolicy or MemoryPlan"):
        as_plan("all")  # type: ignore[arg-type]
    assert parse_size("12GiB") == 12 * 2**30 and parse_size("1.5e3B") == 1500
    for bad in ("12 parsecs", "", "0GiB"):
        with pytest.raises(InputError):
            parse_size(bad)
