"""Small models and a training-step runner shared by the engine tests."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from swapseg.models.unet3d import ConcatConvBlock, Isensee3DUNet


class InplaceViews(nn.Module):
    """In-place activations and view-producing ops (transpose, narrow, reshape, expand)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm3d(6)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.25)
        self.lin = nn.Linear(6, 5)
        self.head = nn.Conv3d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))          # (B, 6, D, H, W), relu in place
        z = y.permute(0, 2, 3, 4, 1)                 # (B, D, H, W, 6) view
        z = self.drop(self.lin(z))                   # linear over channels
        z = z.transpose(1, 4).narrow(1, 0, 3)        # (B, 3, H, W, D) view of a view
        z = torch.nn.functional.leaky_relu_(z.contiguous(), 0.1)
        w = y[:, :3] * y[:, 3:].sigmoid()            # two views of the same storage
        out = self.head(z.transpose(2, 4) + w)
        return out.reshape(out.shape[0], -1).tanh().view_as(out)


def isensee() -> nn.Module:
    return Isensee3DUNet(in_channels=2, out_channels=2, base_filters=4, depth=3, dropout=0.3)


def isensee_split() -> nn.Module:
    """Every decoder concatenation convolved per part, as past the 2 GiB kernel limit."""
    model = isensee()
    for block in model.modules():
        if isinstance(block, ConcatConvBlock):
            block.split_bytes = 0
    return model


def monai_net() -> nn.Module:
    from monai.networks.nets import DynUNet
    return DynUNet(spatial_dims=3, in_channels=2, out_channels=2, kernel_size=[3, 3, 3],
                   strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16],
                   dropout=0.2, norm_name="instance", deep_supervision=False)


def train_steps(make_model, context_factory, shape=(1, 2, 16, 16, 16), steps=3,
                device="cpu", one_context=False):
    """Run ``steps`` Adam steps with a reseeded forward; return losses, grads, params, stats.

    ``one_context``: all steps in one context (stats are then cumulative snapshots).
    """
    if one_context:
        outer = context_factory

        def context_factory(model):
            return contextlib.nullcontext(shared[0])
        shared: list = []
    torch.manual_seed(1234)
    model = make_model().to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(99)
    losses, grads, stats = [], [], []
    stack = contextlib.ExitStack()
    if one_context:
        shared.append(stack.enter_context(outer(model)))
    for step in range(steps):
        x = torch.randn(shape, generator=gen).to(device)
        target = torch.rand(shape, generator=gen).to(device)
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(step)  # dropout masks identical in both runs
        with context_factory(model) as st:
            out = model(x)
            loss = (out.sigmoid() - target[:, : out.shape[1]]).square().mean()
            loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
        grads.append([p.grad.clone() for p in model.parameters()])
        stats.append(copy.copy(st))
    stack.close()
    params = [p.detach().clone() for p in model.parameters()]
    return losses, grads, params, stats


def assert_close(a, b, rtol=1e-5, atol=1e-7) -> None:
    """For CUDA runs whose baseline itself is not deterministic (upsample backward)."""
    for x, y in zip(a[0], b[0], strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    for step_a, step_b in zip(a[1], b[1], strict=True):
        for x, y in zip(step_a, step_b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


class ConvNet(nn.Module):
    """Deterministic on CUDA with deterministic cuDNN: conv, in-place ReLU, views."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 8, 3, padding=1)
        self.c2 = nn.Conv3d(8, 8, 3, padding=1)
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.c1(x))
        z = self.c2(y).sigmoid()
        return self.head(z * y.transpose(2, 3).transpose(2, 3))


def assert_bitwise(a, b) -> None:
    la, ga, pa, _ = a
    lb, gb, pb, _ = b
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(x, y), (x, y)
    for step_a, step_b in zip(ga, gb, strict=True):
        for x, y in zip(step_a, step_b, strict=True):
            assert torch.equal(x, y)
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)
