"""A tiny 3D segmentation net and data shared by the integration tests."""

from __future__ import annotations

import torch
from torch import nn

SHAPE = (1, 9, 11, 10)  # (C, D, H, W): odd sizes on purpose
N_BATCHES = 3


class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True),
                                 nn.LeakyReLU(inplace=True))
        self.mid = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.head(torch.cat([e, self.mid(e)], dim=1))  # (B, 2, D, H, W)


def batches(seed: int = 0, batch: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N_BATCHES):
        x = torch.randn((batch, *SHAPE), generator=g)
        y = (x > 0.3).long()[:, 0]  # (B, D, H, W) class indices
        out.append((x, y))
    return out


def assert_bitwise_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"
