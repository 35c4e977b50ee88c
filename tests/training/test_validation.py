import numpy as np
import pytest
import torch

from swapseg.evaluation.metrics import dice
from swapseg.evaluation.predictor import predict_logits
from swapseg.training.losses import soft_dice_loss
from swapseg.training.validation import validate


def test_validation_dice_is_the_evaluation_dice_by_hand():
    # (B=1, C=3, 1x1x5): WT 2 of 3 overlap, TC both empty, ET prediction only
    pred = np.array([[[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]], bool)
    truth = np.array([[[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]], bool)
    d = dice(pred.reshape(1, 3, 1, 1, 5), truth.reshape(1, 3, 1, 1, 5), axes=(2, 3, 4))
    assert d.tolist() == [[pytest.approx(2 * 2 / 5), 1.0, 0.0]]


def test_sliding_windows_match_full_volume_for_a_pointwise_model():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Conv3d(4, 3, 1)
    x = torch.randn(1, 4, 12, 16, 20, generator=g)
    full = predict_logits(model, x)
    windowed = predict_logits(model, x, window=8)
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
        et = [((model(b["image"]) > 0)[0, 2], b["target"][0, 2] > 0.5) for b in items]
    by_hand = [2 * (p & t).sum().item() / (p.sum().item() + t.sum().item()) for p, t in et]
    assert out["val_loss"] == pytest.approx(sum(losses) / 2, abs=1e-6)
    assert out["val_dice_ET"] == pytest.approx(sum(by_hand) / 2, abs=1e-12)
    assert model.training  # mode restored


def test_validation_and_test_time_share_the_predictor(monkeypatch):
    """validate() gets its logits from predict_logits, with the window it was given."""
    import swapseg.training.validation as validation

    seen = []

    def spy(model, image, window=None, overlap=0.5, tta=False):
        seen.append(window)
        return predict_logits(model, image, window, overlap, tta)

    monkeypatch.setattr(validation, "predict_logits", spy)
    model = torch.nn.Conv3d(4, 3, 1)
    item = {"image": torch.zeros(1, 4, 8, 8, 8), "target": torch.zeros(1, 3, 8, 8, 8)}
    validate(model, [item], soft_dice_loss, torch.device("cpu"), window=4)
    assert seen == [4]
