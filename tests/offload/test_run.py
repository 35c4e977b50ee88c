"""OffloadEngine: one engine for a run, entered per step; the learned prefetch order."""

from __future__ import annotations

import os

import pytest
import torch
from _late_transport import LateFactory
from _swap_models import (
    InplaceViews,
    assert_bitwise,
    isensee,
    isensee_split,
    monai_net,
    train_steps,
)
from torch import nn

from swapseg.errors import InputError
from swapseg.offload import (
    MemoryPlan,
    OffloadEngine,
    RecomputePolicy,
    SwapPolicy,
    apply_plan,
    swap_activations,
)
from swapseg.offload.schedule import PrefetchSchedule

ARCHS = {"isensee": isensee, "isensee_split": isensee_split, "monai_dynunet": monai_net,
         "inplace_views": InplaceViews}


class _RunLong:
    """A context factory for ``train_steps``: one engine per model, one ``step()`` per step."""

    def __init__(self, plan, **kw) -> None:
        self.plan, self.kw, self.engine = plan, kw, None

    def __call__(self, model):
        if self.engine is None:
            self.engine = OffloadEngine(model, self.plan, **self.kw)
        return self.engine.step()


@pytest.fixture(scope="module")
def baselines():
    return {name: train_steps(make, lambda m: swap_activations(m, None), steps=4)
            for name, make in ARCHS.items()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("late", [False, True])
def test_run_long_engine_is_bitwise_over_several_steps(baselines, arch, late):
    factory = LateFactory(seed=len(arch)) if late else None
    run = _RunLong(SwapPolicy(tier="host", prefetch=2), transport=factory)
    result = train_steps(ARCHS[arch], run, steps=4)
    run.engine.close()
    assert_bitwise(baselines[arch], result)
    st = run.engine.stats
    assert st.steps == st.forwards == st.backwards == 4
    assert st.last_step.swapped > 0 and st.last_step.steps == 1
    assert st.swapped == 4 * st.last_step.swapped  # the same graph every step
    assert st.saved_bytes == 0
    # the step's own peak: a window of the run's, which the first step already reached
    assert 0 < st.last_step.peak_saved_bytes <= st.peak_saved_bytes


def test_run_long_plan_with_recompute_is_bitwise(baselines):
    plan = MemoryPlan(SwapPolicy(tier="host", prefetch=3),
                      RecomputePolicy(scopes=("encoder.*",), mode="speed"))
    run = _RunLong(plan)
    result = train_steps(isensee, run, steps=4)
    assert run.engine.recomputed  # the wrappers live for the run...
    run.engine.close()
    assert not any("forward" in m.__dict__ for m in run.engine.model.modules())  # ...and go
    assert_bitwise(baselines["isensee"], result)


class _ForwardOrderUnpack(nn.Module):
    """``a * b`` unpacks ``a`` (made first) before ``b``: backward reads in forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(1, 2, 3, padding=1)
        self.c2 = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x).sin()
        b = self.c2(x).cos()
        return a * b


def _misses_per_step(model, plan, steps=4, shape=(1, 1, 5, 7, 9)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    misses = []
    with OffloadEngine(model, plan, workers=0) as engine:
        for _ in range(steps):
            with engine.step():
                model(x).square().sum().backward()
            misses.append(engine.stats.last_step.prefetch_misses)
    return misses


def test_learned_order_is_used_when_backward_is_not_reverse_forward():
    torch.manual_seed(0)
    misses = _misses_per_step(_ForwardOrderUnpack(), SwapPolicy(tier="host", prefetch=1))
    # step 1 prefetches in reverse forward order, which this graph does not follow
    assert misses[0] > 0
    assert misses[1:] == [0, 0, 0]


def test_one_step_contexts_lose_the_learned_order():
    """What the integrations did before: a context per step misses every step."""
    torch.manual_seed(0)
    model = _ForwardOrderUnpack()
    x = torch.randn(1, 1, 5, 7, 9)
    misses = []
    for _ in range(3):
        with swap_activations(model, SwapPolicy(tier="host", prefetch=1), workers=0) as st:
            model(x).square().sum().backward()
        misses.append(st.prefetch_misses)
    assert min(misses) > 0


def test_schedule_replays_the_recorded_order_not_reverse_forward():
    s = PrefetchSchedule(lookahead=2)
    assert s.begin(5) == [4, 3]  # nothing recorded: reverse forward order
    order = [1, 4, 0, 3, 2]
    for i in order:
        s.unpacked(i)
    s.end(5)
    assert s.begin(5) == [1, 4]
    assert [s.unpacked(i) for i in order] == [[4, 0], [0, 3], [3, 2], [2], []]
    s.end(5)
    assert s.begin(6) == [5, 4]  # another graph: back to reverse forward order


def test_a_failing_step_releases_everything_and_the_next_step_runs(tmp_path):
    torch.manual_seed(0)
    model = isensee()
    x = torch.randn(1, 2, 8, 12, 4)
    policy = SwapPolicy(tier="disk", disk_dir=str(tmp_path), prefetch=2)
    with OffloadEngine(model, policy) as engine:
        with pytest.raises(ValueError, match="boom"), engine.step():
            loss = model(x).square().mean()
            raise ValueError("boom")
        assert engine._swap.store.live == set() and os.listdir(tmp_path) == []
        del loss
        with engine.step():
            model(x).square().mean().backward()
        assert engine.stats.last_step.swapped > 0
    assert engine.stats.steps == 1  # the failed step is not counted


def test_a_graph_that_outlives_its_step_still_backwards():
    torch.manual_seed(0)
    model = isensee()
    x = torch.randn(1, 2, 8, 12, 4)
    torch.manual_seed(1)  # the same dropout masks in both forwards
    model(x).square().mean().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with OffloadEngine(model, SwapPolicy(tier="host")) as engine:
        torch.manual_seed(1)
        with engine.step():
            loss = model(x).square().mean()
        loss.backward()  # after the step closed: its saved tensors still come back
    for p, g in zip(model.parameters(), want, strict=True):
        assert torch.equal(p.grad, g)


def test_close_is_idempotent_and_a_closed_engine_refuses_steps():
    model = isensee()
    engine = OffloadEngine(model, SwapPolicy(tier="host"))
    engine.close()
    engine.close()
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(InputError, match="closed"), engine.step():
        pass


def test_plan_none_is_a_null_step():
    model = isensee()
    with OffloadEngine(model, None) as engine, engine.step() as st:
        model(torch.randn(1, 2, 4, 8, 12)).sum().backward()
    assert st.packed == 0 and engine.stats.last_step.packed == 0
    assert not any(m._forward_hooks for m in model.modules())


def test_apply_plan_takes_a_policy_and_wrong_types_are_one_line_errors():
    model = isensee()
    with apply_plan(model, SwapPolicy(tier="host")) as st:
        model(torch.randn(1, 2, 4, 8, 12)).sum().backward()
    assert st.swapped > 0
    with pytest.raises(InputError, match=r"^swap_activations needs a SwapPolicy or None, "
                                         r"got str 'all'$"):
        with swap_activations(model, "all"):
            pass
    with pytest.raises(InputError, match="^plan must be a MemoryPlan, a SwapPolicy or None"):
        OffloadEngine(model, {"swap": "all"})


def test_a_string_glob_is_one_glob_and_an_unmatched_glob_names_the_nearest_modules():
    assert SwapPolicy(exclude="decoder.*").exclude == ("decoder.*",)
    model = isensee()
    with pytest.raises(InputError, match=r"^exclude glob 'decodr\.\*' matches no module of "
                                         r"Isensee3DUNet \(nearest: decoder"):
        OffloadEngine(model, SwapPolicy(exclude="decodr.*"))
    with pytest.raises(InputError, match="include glob 'enc.*'"):
        OffloadEngine(model, SwapPolicy(include=("decoder.*", "enc.*")))


def test_disk_dir_must_exist(tmp_path):
    missing = tmp_path / "no" / "dir"
    with pytest.raises(InputError, match=f"^disk_dir {missing}: no such directory"):
        SwapPolicy(tier="disk", disk_dir=str(missing))
    assert not (tmp_path / "no").exists()


def test_auto_tier_on_a_cpu_runs_the_disk_tier():
    engine = OffloadEngine(isensee(), SwapPolicy())
    try:
        assert engine.policy.tier == "disk"
    finally:
        engine.close()
