"""Losses of the reference pipeline: the soft Dice of ellisdg/3DUnetCNN, and Dice + BCE.

The reference (``weighted_dice_coefficient`` in ellisdg's Keras code) takes the Dice per
sample and per channel, with a smoothing term in numerator and denominator, and averages:

    dice[b, c] = (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)
    loss       = 1 - mean_{b, c} dice[b, c]

Keras minimises ``-dice``; ``1 - dice`` has the same gradient and reads as a loss in
[0, 1]. An empty channel predicted empty scores 1, as BraTS evaluations count it.
The network returns logits; the sigmoid is applied here.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "dice_bce_loss", "make_loss", "Loss", "LOSSES"]

Loss = Literal["dice", "dice_bce"]
LOSSES: tuple[str, ...] = get_args(Loss)


def soft_dice_per_channel(logits: torch.Tensor, target: torch.Tensor,
                          eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice of ``sigmoid(logits)`` against ``target``, shape (B, C)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         "must have the same shape")
    probs = torch.sigmoid(logits.float())
    target = target.float()
    dims = tuple(range(2, logits.dim()))  # spatial axes of (B, C, *spatial)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return (2.0 * inter + eps) / (denom + eps)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean over samples and channels of the per-sample, per-channel soft Dice."""
    return 1.0 - soft_dice_per_channel(logits, target, eps).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
                  bce_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice loss plus ``bce_weight`` times the voxel-mean binary cross-entropy."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return soft_dice_loss(logits, target, eps) + bce_weight * bce


def make_loss(name: str, eps: float = 1e-5):
    """The loss function named ``name`` (one of :data:`LOSSES`) as ``f(logits, target)``."""
    if name == "dice":
        return lambda logits, target: soft_dice_loss(logits, target, eps)
    if name == "dice_bce":
        return lambda logits, target: dice_bce_loss(logits, target, eps)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
