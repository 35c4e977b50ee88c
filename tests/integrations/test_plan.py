"""The integrations' door to the planner: any model, any output pytree, models left intact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swapseg.integrations._plan import choose_plan, plan_search


class Aliased(nn.Module):
    """A decoder that holds its encoder (as dynamic_network_architectures' U-Nets do), and
    a deep-supervision-like list output."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.Tanh(),
                                     nn.Conv3d(8, 8, 3, padding=1), nn.Tanh(),
                                     nn.Conv3d(8, 4, 3, padding=1), nn.Tanh())
        self.decoder = nn.Module()
        self.decoder.encoder = self.encoder
        self.decoder.head = nn.Conv3d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.decoder.encoder(x)
        y = self.decoder.head(h)
        return [y, y[:, :, ::2, ::2, ::2]]


def _loss(out: list[torch.Tensor]) -> torch.Tensor:
    return sum(o.float().mean() for o in out)


@pytest.mark.parametrize("device", ["a100-pcie4", "local"])
def test_planning_leaves_an_aliased_model_its_own_parameters(device: str) -> None:
    torch.manual_seed(0)
    model = Aliased()
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    res = plan_search(model, (1, 2, 16, 16, 16), device, budget_bytes=2**30, loss_fn=_loss)
    assert res.fits and res.plan.name == "keep-all"  # 1 GiB is plenty
    assert res.plan.model_class.endswith(":Aliased") and res.rows[0].result == res.keep_all
    for n, p in model.named_parameters():
        assert p is before[n][0] and type(p) is nn.Parameter and torch.equal(p, before[n][1])
    assert model.decoder.encoder[0].weight is model.encoder[0].weight
    _loss(model(torch.randn(1, 2, 16, 16, 16))).backward()  # a real step still runs


def test_an_impossible_budget_says_what_is_missing() -> None:
    from swapseg.errors import InputError

    with pytest.raises(InputError, match="bytes\\) missing"):
        choose_plan(Aliased(), (1, 2, 16, 16, 16), "a100-pcie4", budget_bytes=1000,
                    loss_fn=_loss)


def test_plan_search_passes_the_target_description_to_the_planner() -> None:
    """DiceCELoss takes ``(output, target)``: a described target (and one shaped like
    the output) plans as the same loss closed over a real target does; dropped, the
    one-argument loss would fail."""
    monai_losses = pytest.importorskip("monai.losses")
    from swapseg.errors import InputError
    from swapseg.integrations._plan import like_output

    shape, labels = (1, 2, 13, 14, 15), (1, 1, 13, 14, 15)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    dice = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True)
    real = torch.randint(0, 3, labels, generator=torch.Generator().manual_seed(1))
    closed = plan_search(model, shape, "a100-pcie4", budget_bytes="1GiB",
                         loss_fn=lambda out: dice(out, real))
    described = plan_search(model, shape, "a100-pcie4", budget_bytes="1GiB", loss_fn=dice,
                            target=(labels, torch.int64))
    assert described.keep_all.peak_bytes == pytest.approx(closed.keep_all.peak_bytes,
                                                          rel=0.01)
    onehot = monai_losses.DiceCELoss(softmax=True)
    like = plan_search(model, shape, "a100-pcie4", budget_bytes="1GiB", loss_fn=onehot,
                       target=like_output())
    assert like.fits and like.keep_all.peak_bytes > 0
    with pytest.raises(InputError, match="target"):
        plan_search(model, shape, "a100-pcie4", budget_bytes="1GiB", loss_fn=dice)
