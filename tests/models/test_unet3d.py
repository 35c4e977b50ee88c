import pytest
import torch

from swapseg.models.unet3d import Isensee3DUNet


def test_reference_parameter_count():
    # base 16, depth 5, 3 outputs, 1x1x1 heads: the ellisdg Keras isensee2017 model
    model = Isensee3DUNet(in_channels=4, out_channels=3, base_filters=16, depth=5)
    assert sum(p.numel() for p in model.parameters()) == 8_269_561


def test_output_shape_odd_batch_and_small_net():
    model = Isensee3DUNet(base_filters=4, depth=3).eval()
    x = torch.randn(2, 4, 12, 16, 20)  # sides multiple of 2**(depth-1) = 4
    assert model(x).shape == (2, 3, 12, 16, 20)


def test_rejects_side_not_multiple_of_divisor():
    model = Isensee3DUNet(base_filters=4, depth=5)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 4, 16, 16, 24))


def test_deep_supervision_heads_all_receive_gradient():
    model = Isensee3DUNet(base_filters=4, depth=4)
    model(torch.randn(1, 4, 16, 16, 16)).sum().backward()
    for head in model.heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
