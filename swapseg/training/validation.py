"""Validation on whole volumes: loss and hard Dice per region.

In full mode the network sees the whole volume. In patch mode MONAI's sliding-window
inference stitches patch-sized windows (Gaussian-weighted, 50 % overlap) into logits for
the whole volume, so both arms are validated on the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from monai.inferers import sliding_window_inference
from torch import nn

__all__ = ["whole_volume_logits", "hard_dice", "validate", "REGIONS"]

REGIONS = ("WT", "TC", "ET")


def whole_volume_logits(model: nn.Module, image: torch.Tensor,
                        window: int | None = None, sw_batch_size: int = 1) -> torch.Tensor:
    """Logits (B, C, D, H, W) for ``image`` (B, 4, D, H, W); sliding windows if ``window``."""
    if window is None or all(s <= window for s in image.shape[2:]):
        return model(image)
    return sliding_window_inference(image, roi_size=(window,) * 3, sw_batch_size=sw_batch_size,
                                    predictor=model, overlap=0.5, mode="gaussian")


def hard_dice(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice per sample and channel of boolean masks (B, C, ...); both empty counts as 1."""
    dims = tuple(range(2, pred.dim()))
    pred, truth = pred.bool(), truth.bool()
    inter = (pred & truth).sum(dims).double()
    total = pred.sum(dims).double() + truth.sum(dims).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable[dict], loss_fn: Callable,
             device: torch.device, window: int | None = None) -> dict[str, float]:
    """Mean loss and mean Dice per region over the volumes of ``loader``."""
    was_training = model.training
    model.eval()
    losses, dices = [], []
    try:
        for batch in loader:
            image = batch["image"].to(device)
            target = batch["target"].to(device)
            logits = whole_volume_logits(model, image, window)
            losses.append(float(loss_fn(logits, target)) * image.shape[0])
            dices.append(hard_dice(logits > 0, target > 0.5).cpu())  # sigmoid > 0.5
    finally:
        model.train(was_training)
    if not dices:
        return {"val_loss": float("nan"), **{f"val_dice_{r}": float("nan") for r in REGIONS}}
    dice = torch.cat(dices).mean(0)  # (C,)
    n = sum(d.shape[0] for d in dices)
    out = {"val_loss": sum(losses) / n}
    out.update({f"val_dice_{r}": float(dice[i]) for i, r in enumerate(REGIONS)})
    return out
