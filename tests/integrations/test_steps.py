"""StepSwapper: one engine per run, a step of it per framework step (no framework needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.integrations._plan import MemoryPlan, SwapPolicy, as_plan, parse_size
from swapseg.integrations.steps import StepSwapper


class _Wrapper(nn.Module):
    """A LightningModule-like wrapper: the network the plan was made for is ``self.net``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _SkipNet()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


class _SkipNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.Tanh())
        self.decoder = nn.Sequential(nn.Conv3d(5, 3, 3, padding=1), nn.Sigmoid())
        self.head = nn.Conv3d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder(x)
        return self.head(self.decoder(torch.cat([x, e], dim=1)))


_CLASS = f"{_SkipNet.__module__}:{_SkipNet.__qualname__}"


def test_step_figures_come_from_the_engine_and_misses_after_the_first_step_are_0() -> None:
    torch.manual_seed(0)
    model = _SkipNet()
    x = torch.randn(1, 2, 5, 7, 6)
    swapper = StepSwapper(SwapPolicy(tier="host", prefetch=1))
    misses = []
    for _ in range(4):
        with swapper.step(model):
            _step(model, x)
        misses.append(swapper.stats.last_step.prefetch_misses)
    assert misses[1:] == [0, 0, 0]
    assert swapper.stats.swapped == 4 * swapper.stats.last_step.swapped > 0
    swapper.close()
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("how", ["model_class", "module"])
def test_scopes_are_relative_to_the_planned_module_inside_a_wrapper(how, caplog) -> None:
    plan = MemoryPlan(swap=SwapPolicy(tier="host", include="decoder*"),
                      model_class=_CLASS if how == "model_class" else "")
    swapper = StepSwapper(plan, module="net" if how == "module" else None)
    model = _Wrapper()
    with caplog.at_level("INFO", logger="swapseg.integrations"), swapper.step(model):
        _step(model, torch.randn(1, 2, 5, 7, 6))
    assert swapper.module == "net" and swapper.engine.model is model.net
    by_scope = swapper.stats.by_scope
    assert by_scope["decoder.0"].swapped > 0 and by_scope["encoder.0"].swapped == 0
    assert "swapseg: first step of 'net' (_SkipNet): swapped" in caplog.text


def test_the_planned_module_must_be_there_and_a_plan_swapping_nothing_warns(caplog) -> None:
    with pytest.raises(InputError, match="^the plan was made for x:Y, and no module of"):
        StepSwapper(MemoryPlan(swap=SwapPolicy(), model_class="x:Y")).open(_Wrapper())
    with pytest.raises(InputError, match=r"^module 'nett' is not a submodule of _Wrapper "
                                         r"\(nearest: net"):
        StepSwapper(SwapPolicy(), module="nett").open(_Wrapper())
    with pytest.raises(InputError, match="include glob 'decoder' matches no module"):
        StepSwapper(SwapPolicy(include="decoder")).open(_Wrapper())  # scopes say net.decoder
    swapper = StepSwapper(SwapPolicy(tier="host", min_bytes=2**30))
    model = _SkipNet()
    with caplog.at_level("INFO", logger="swapseg.integrations"), swapper.step(model):
        _step(model, torch.randn(1, 2, 5, 7, 6))
    assert "swapped 0 of" in caplog.text and "the plan swaps nothing here" in caplog.text


def _step(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_steps_swap_and_match_unswapped_gradients_bitwise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv3d(3, 1, 1))
    xs = [torch.randn(1, 2, 5, 7, 6) for _ in range(3)]
    swapper = StepSwapper(as_plan(SwapPolicy(tier="host")))
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
    with pytest.raises(InputError, match="a MemoryPlan, a SwapPolicy or None"):
        as_plan("all")  # type: ignore[arg-type]
    assert parse_size("12GiB") == 12 * 2**30 and parse_size("1.5e3B") == 1500
    for bad in ("12 parsecs", "", "0GiB"):
        with pytest.raises(InputError):
            parse_size(bad)
