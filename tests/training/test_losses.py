import math

import pytest
import torch

from swapseg.training.losses import dice_bce_loss, make_loss, soft_dice_loss

BIG = 40.0  # sigmoid(40) == 1 and sigmoid(-40) ~ 4e-18 in float32


def test_soft_dice_by_hand_hard_probabilities():
    # one sample, two channels, 3x1x1 volume (odd, tiny)
    target = torch.tensor([[[[[1.0]], [[1.0]], [[0.0]]], [[[0.0]], [[0.0]], [[0.0]]]]])
    probs_on = torch.tensor([[[[[1.0]], [[0.0]], [[1.0]]], [[[0.0]], [[0.0]], [[0.0]]]]])
    logits = (probs_on * 2 - 1) * BIG
    # channel 0: inter 1, |P| 2, |T| 2 -> (2 + eps) / (4 + eps); channel 1: empty/empty -> 1
    eps = 1e-5
    d0 = (2 * 1 + eps) / (4 + eps)
    expected = 1 - (d0 + 1.0) / 2
    assert soft_dice_loss(logits, target, eps).item() == pytest.approx(expected, abs=1e-6)


def test_soft_dice_by_hand_soft_probabilities():
    # probabilities 0.5 everywhere (logit 0) on a 1x1x(1x1x5) volume with 2 foreground voxels
    target = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 1, 5)
    logits = torch.zeros_like(target)
    eps = 1e-5
    dice = (2 * 1.0 + eps) / (2.5 + 2 + eps)  # inter 0.5*2, |P| 0.5*5, |T| 2
    assert soft_dice_loss(logits, target, eps).item() == pytest.approx(1 - dice, abs=1e-6)


def test_soft_dice_is_per_sample_not_pooled():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 5, 7, generator=g)
    target = (torch.rand(2, 3, 3, 5, 7, generator=g) > 0.7).float()
    target[1, 2] = 0  # an empty channel in the second sample
    whole = soft_dice_loss(logits, target)
    singles = [soft_dice_loss(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
    assert whole.item() == pytest.approx(sum(s.item() for s in singles) / 2, abs=1e-6)
    # pooling the batch would give a different number: the test can tell them apart
    pooled = soft_dice_loss(logits.transpose(0, 1).reshape(1, 3, -1, 5, 7),
                            target.transpose(0, 1).reshape(1, 3, -1, 5, 7))
    assert abs(pooled.item() - whole.item()) > 1e-4


def test_dice_bce_adds_bce():
    target = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1, 1)
    logits = torch.tensor([0.0, 0.0, 0.0]).reshape(1, 1, 3, 1, 1)
    bce = math.log(2)  # -log(0.5) for every voxel
    assert dice_bce_loss(logits, target).item() == pytest.approx(
        soft_dice_loss(logits, target).item() + bce, abs=1e-6)


def test_perfect_prediction_loss_near_zero_and_gradients_finite():
    target = (torch.rand(1, 3, 5, 7, 9) > 0.5).float()
    logits = ((target * 2 - 1) * BIG).requires_grad_()
    loss = make_loss("dice")(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_shape_mismatch_and_unknown_loss():
    with pytest.raises(ValueError, match="same shape"):
        soft_dice_loss(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")
