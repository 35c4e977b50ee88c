"""Validation on whole volumes: loss and hard Dice per region.

The logits come from the one predictor that test-time prediction uses
(:func:`swapseg.evaluation.predictor.predict_logits`): in full mode one pass over the whole
volume, in patch mode MONAI's sliding windows of the patch (Gaussian-weighted logits, 50 %
overlap), so both arms are validated on the same thing. The Dice is the evaluation's
(:func:`swapseg.evaluation.metrics.dice`), thresholded at logit 0 (probability 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from swapseg.evaluation.metrics import dice
from swapseg.evaluation.predictor import predict_logits

__all__ = ["validate", "REGIONS"]

REGIONS = ("WT", "TC", "ET")


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable[dict], loss_fn: Callable,
             device: torch.device, window: int | None = None) -> dict[str, float]:
    """Mean loss and mean Dice per region over the volumes of ``loader``."""
    losses, dices = [], []
    for batch in loader:
        image = batch["image"].to(device)  # (B, 4, D, H, W)
        target = batch["target"].to(device)  # (B, 3, D, H, W)
        logits = predict_logits(model, image, window)
        losses.append(float(loss_fn(logits, target)) * image.shape[0])
        dices.append(dice((logits > 0).cpu().numpy(), (target > 0.5).cpu().numpy(),
                          axes=(2, 3, 4)))  # (B, 3)
    if not dices:
        return {"val_loss": float("nan"), **{f"val_dice_{r}": float("nan") for r in REGIONS}}
    per_sample = np.concatenate(dices)  # (N, 3)
    mean = per_sample.mean(0)
    out = {"val_loss": sum(losses) / per_sample.shape[0]}
    out.update({f"val_dice_{r}": float(mean[i]) for i, r in enumerate(REGIONS)})
    return out
