"""swap_branches: skip connections freed during forward, restored before their use."""

from __future__ import annotations

import pytest
import torch
from _late_transport import LateFactory
from _swap_models import assert_bitwise, isensee, train_steps
from torch import nn

from swapseg.offload import SwapPolicy, swap_activations


def _swap(policy, transport=None):
    return lambda m: swap_activations(m, policy, transport=transport)


@pytest.mark.parametrize("tier", ["host", "disk", "late"])
def test_bitwise_with_branches(tier, tmp_path):
    base = train_steps(isensee, _swap(None))
    late = LateFactory(seed=11) if tier == "late" else None
    policy = SwapPolicy(tier="host" if late else tier, swap_branches=True, prefetch=2,
                        disk_dir=str(tmp_path) if tier == "disk" else None)
    run = train_steps(isensee, _swap(policy, late), one_context=True)
    assert_bitwise(base, run)
    evictions = [st.branch_evictions for st in run[3]]  # cumulative
    assert evictions[0] == 0 < evictions[1] < evictions[2]  # step 1 only records uses
    if late:
        assert late.made[0].out_of_order()


def test_skip_storage_is_freed_while_the_decoder_waits():
    model = isensee()  # depth 3: encoder.0's output waits for decoder.1
    x = torch.randn(1, 2, 16, 16, 16)
    skip: list = []
    seen: list[int] = []
    # the storage object is taken at production; asking the tensor later would be a use
    model.encoder[0].register_forward_hook(lambda m, a, out: skip.append(out.untyped_storage()))
    model.decoder[0].register_forward_pre_hook(lambda m, a: seen.append(skip[-1].nbytes()))
    with swap_activations(model, SwapPolicy(swap_branches=True), workers=0) as st:
        for _ in range(2):
            model(x).square().mean().backward()
    full = 1 * 4 * 16**3 * 4
    assert seen == [full, 0]  # step 2: freed while decoder.0 runs
    assert st.branch_bytes_out >= full


class PlainSkip(nn.Module):
    """A skip read by plain Python code (no module call) far from where it was made."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, 3, 3, padding=1)
        self.body = nn.Sequential(*[nn.Conv3d(3, 3, 3, padding=1) for _ in range(12)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.a(x)
        y = self.body(s)
        for _ in range(10):
            y = y * 1.0001 + 0.001
        return (y + s.transpose(2, 4).transpose(2, 4)).sum(dim=1)


def test_guard_restores_for_non_module_uses():
    base = train_steps(PlainSkip, _swap(None), shape=(1, 1, 6, 7, 5))
    run = train_steps(PlainSkip, _swap(SwapPolicy(swap_branches=True, tier="host")),
                      shape=(1, 1, 6, 7, 5), one_context=True)
    assert_bitwise(base, run)
    assert run[3][-1].branch_evictions > 0


def test_no_grad_forward_does_not_evict():
    model = isensee().eval()
    x = torch.randn(1, 2, 16, 16, 16)
    ref = model(x)
    with swap_activations(model, SwapPolicy(swap_branches=True)) as st:
        model(x).sum().backward()
        with torch.no_grad():
            out = model(x)
    assert torch.equal(ref, out) and st.branch_evictions == 0


class CloneHost:
    """A ``BranchHost`` with no engine behind it: the host copy is a clone made on demand."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def is_param_or_buffer(self, t):
        self._count("is_param_or_buffer")
        return isinstance(t, nn.Parameter)

    def host_copy(self, t):
        self._count("host_copy")
        return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).clone()

    def evicted(self, entry):
        self._count("evicted")

    def start_restore(self, entry):
        from swapseg.offload.transport import Ticket
        self._count("start_restore")
        return Ticket(value=entry)

    def restore_into(self, t, entry, ticket):
        self._count("restore_into")
        torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).copy_(ticket.result())


def test_swapper_needs_only_the_branch_host_interface():
    from swapseg.offload.branches import BranchSwapper

    torch.manual_seed(0)
    model = PlainSkip()
    x = torch.randn(1, 1, 6, 7, 5)
    ref = model(x)
    host = CloneHost()
    swapper = BranchSwapper(host, model, lead=2)
    try:
        outs = [model(x) for _ in range(3)]  # the first forward only records uses
    finally:
        swapper.remove()
    assert all(torch.equal(ref, out) for out in outs)
    assert host.calls.get("evicted", 0) >= 2 and host.calls["restore_into"] == host.calls["evicted"]
