"""The Isensee et al. (2017) 3D U-Net, as in the Keras model the reference paper trained.

Follows ellisdg/3DUnetCNN ``isensee2017_model``: context modules with instance
normalization, leaky ReLU and spatial dropout; nearest-neighbour upsampling; a
localization module per decoder level; 1x1x1 segmentation heads on the three finest
decoder levels, summed with x2 upsampling (deep supervision).

The network returns logits. The Keras model ends in a sigmoid; we apply it in the loss
and at inference instead, because ``sigmoid`` followed by a log in BCE loses precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBlock", "ConcatConvBlock", "Isensee3DUNet", "DEFAULT_NEGATIVE_SLOPE",
           "SPLIT_CONCAT_BYTES"]

#: The Isensee paper (arXiv 1802.10508) uses leaky ReLU with slope 1e-2. Keras's
#: ``LeakyReLU()`` default, which ellisdg's code inherits, is 0.3. We follow the
#: paper, since 0.3 is an accident of a library default, not a design choice.
DEFAULT_NEGATIVE_SLOPE = 1e-2


class ConvBlock(nn.Sequential):
    """Conv3d -> InstanceNorm3d(affine, eps 1e-3) -> LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2),
            nn.InstanceNorm3d(c_out, eps=1e-3, affine=True),
            nn.LeakyReLU(negative_slope),
        )


#: No conv input this large is ever built. oneDNN's fast CPU convolution kernels index a
#: tensor with 32-bit offsets, so for a conv input of 2**31 bytes or more they dispatch a
#: reference kernel that is orders of magnitude slower (``ONEDNN_VERBOSE`` shows
#: ``ref:any``). The first to cross it are the finest decoder level's two 32-channel
#: inputs at 256^3 in fp32: the upsampled coarser level and the skip concatenation.
SPLIT_CONCAT_BYTES = 2**31


def channel_pieces(x: torch.Tensor, scale: int, limit: int) -> int:
    """How many channel pieces keep ``x`` upsampled ``scale`` times per side under ``limit``."""
    nbytes = x.numel() * x.element_size() * scale ** (x.dim() - 2)
    if nbytes < limit:
        return 1
    return min(x.shape[1], nbytes // max(limit, 1) + 1)


class ConcatConvBlock(ConvBlock):
    """A ConvBlock over the channel concatenation of its inputs, ``torch.cat(parts, 1)``.

    Below ``split_bytes`` it concatenates and convolves, as the Keras model does. From
    there on it convolves each part with its slice of the weight and sums the results:
    the same convolution (in another summation order), and no conv input, nor the
    concatenation itself, ever reaches ``split_bytes``. The parameters are the same
    either way, so checkpoints do not care which path ran.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3,
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> None:
        super().__init__(c_in, c_out, kernel, negative_slope=negative_slope)
        self.split_bytes = SPLIT_CONCAT_BYTES

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if len(parts) == 1:
            return super().forward(parts[0])
        nbytes = sum(p.numel() * p.element_size() for p in parts)
        if nbytes < self.split_bytes:
            return super().forward(torch.cat(parts, dim=1))  # (B, sum C_i, D, H, W)
        conv, norm, act = self
        weights = conv.weight.split([p.shape[1] for p in parts], dim=1)
        y = F.conv3d(parts[0], weights[0], conv.bias, conv.stride, conv.padding)
        for part, weight in zip(parts[1:], weights[1:], strict=True):
            # in place: a conv keeps its inputs for backward, never its output
            y.add_(F.conv3d(part, weight, None, conv.stride, conv.padding))
        return act(norm(y))


class ContextModule(nn.Module):
    """ConvBlock -> Dropout3d -> ConvBlock; the level adds it to its first output."""

    def __init__(self, channels: int, dropout: float, negative_slope: float) -> None:
        super().__init__()
        self.conv1 = ConvBlock(channels, channels, negative_slope=negative_slope)
        self.dropout = nn.Dropout3d(dropout)
        self.conv2 = ConvBlock(channels, channels, negative_slope=negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.dropout(self.conv1(x)))


class EncoderLevel(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float,
                 negative_slope: float) -> None:
        super().__init__()
        self.conv = ConvBlock(c_in, c_out, stride=stride, negative_slope=negative_slope)
        self.context = ContextModule(c_out, dropout, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.context(x)


class DecoderLevel(nn.Module):
    """Upsample x2 -> ConvBlock, concat with the skip, localization (3^3 then 1^3).

    Where the upsampled input would reach ``SPLIT_CONCAT_BYTES``, it is upsampled in
    channel pieces (each its own tensor) that ``up_conv`` convolves one by one.
    """

    def __init__(self, c_in: int, c_out: int, negative_slope: float) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_conv = ConcatConvBlock(c_in, c_out, negative_slope=negative_slope)
        self.loc1 = ConcatConvBlock(2 * c_out, c_out, negative_slope=negative_slope)
        self.loc2 = ConvBlock(c_out, c_out, kernel=1, negative_slope=negative_slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        n = channel_pieces(x, 2, self.up_conv.split_bytes)
        x = self.up_conv(*(self.up(p) for p in x.chunk(n, dim=1)))
        # skip first in the concatenation, as in Keras
        return self.loc2(self.loc1(skip, x))


class Isensee3DUNet(nn.Module):
    """Isensee 2017 3D U-Net.

    Args:
        in_channels: input modalities (4 for BraTS).
        out_channels: output channels (3: WT/TC/ET regions, or raw labels 1/2/4).
        base_filters: filters of the first level; level k has ``base_filters * 2**k``.
        depth: number of encoder levels.
        dropout: Dropout3d rate in the context modules.
        negative_slope: leaky ReLU slope.
        seg_levels: decoder levels with a deep-supervision head (at most depth-1;
            shallower networks use all their decoder levels).
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 3, base_filters: int = 16,
                 depth: int = 5, dropout: float = 0.3,
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE, seg_levels: int = 3) -> None:
        super().__init__()
        seg_levels = min(seg_levels, depth - 1)
        if depth < 2 or seg_levels < 1:
            raise ValueError(f"need depth >= 2 and 1 <= seg_levels <= depth-1, got "
                             f"depth={depth}, seg_levels={seg_levels}")
        filters = [base_filters * 2**k for k in range(depth)]
        self.depth = depth
        self.seg_levels = seg_levels
        self.encoder = nn.ModuleList(
            EncoderLevel(in_channels if k == 0 else filters[k - 1], filters[k],
                         1 if k == 0 else 2, dropout, negative_slope)
            for k in range(depth))
        # decoder[i] produces level depth-2-i (coarse to fine)
        self.decoder = nn.ModuleList(
            DecoderLevel(filters[k + 1], filters[k], negative_slope)
            for k in range(depth - 2, -1, -1))
        self.heads = nn.ModuleList(
            nn.Conv3d(filters[k], out_channels, 1) for k in range(seg_levels - 1, -1, -1))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    @property
    def divisor(self) -> int:
        """Input side lengths must be multiples of this."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if x.dim() != 5 or bad:
            raise ValueError(f"input must be (B, C, D, H, W) with sides divisible by "
                             f"{self.divisor}; got shape {tuple(x.shape)}")
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        out = None
        n_dec = len(self.decoder)
        for i, level in enumerate(self.decoder):
            x = level(x, skips[n_dec - 1 - i])
            head_idx = i - (n_dec - self.seg_levels)
            if head_idx >= 0:
                seg = self.heads[head_idx](x)
                out = seg if out is None else self.up(out) + seg
        assert out is not None
        return out
