import pytest
import torch

from swapseg.training.losses import soft_dice_loss
from swapseg.training.validation import hard_dice, validate, whole_volume_logits


def test_hard_dice_by_hand():
    # (B=1, C=3, 1x1x5): WT 2 of 3 overlap, TC both empty, ET prediction only
    pred = torch.tensor([[[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]]).bool()
    truth = torch.tensor([[[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]]).bool()
    d = hard_dice(pred.reshape(1, 3, 1, 1, 5), truth.reshape(1, 3, 1, 1, 5))
    assert d.tolist() == [[pytest.approx(2 * 2 / 5), 1.0, 0.0]]


def test_sliding_windows_match_full_volume_for_a_pointwise_model():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Conv3d(4, 3, 1)
    x = torch.randn(1, 4, 12, 16, 20, generator=g)
    with torch.no_grad():
        full = whole_volume_logits(model, x)
        windowed = whole_volume_logits(model, x, window=8)
    assert torch.allclose(full, windowed, atol=1e-5)


def test_validate_means_over_cases():
    model = torch.nn.Conv3d(4, 3, 1)
    g = torch.Generator().manual_seed(1)
    items = [{"image": torch.randn(1, 4, 5, 7, 9, generator=g),
              "target": (torch.rand(1, 3, 5, 7, 9, generator=g) > 0.5).float()}
             for _ in range(2)]
    out = validate(model, items, soft_dice_loss, torch.device("cpu"))
    with torch.no_grad():
        losses = [soft_dice_loss(model(b["image"]), b["target"]).item() for b in items]
        dices = [hard_dice(model(b["image"]) > 0, b["target"] > 0.5)[0] for b in items]
    assert out["val_loss"] == pytest.approx(sum(losses) / 2, abs=1e-6)
    assert out["val_dice_ET"] == pytest.approx(float((dices[0][2] + dices[1][2]) / 2))
    assert model.training  # mode restored
