import pytest
import torch

from swapseg.models.unet3d import (
    SPLIT_CONCAT_BYTES,
    ConcatConvBlock,
    ConvBlock,
    Isensee3DUNet,
    channel_pieces,
)


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


def _concat_block(split_bytes: int) -> tuple[ConcatConvBlock, list[torch.Tensor]]:
    torch.manual_seed(0)
    block = ConcatConvBlock(5, 3)
    block.split_bytes = split_bytes
    parts = [torch.randn(1, 2, 5, 7, 9, requires_grad=True),
             torch.randn(1, 3, 5, 7, 9, requires_grad=True)]
    return block, parts


def test_concat_block_below_the_limit_is_cat_then_conv_bitwise():
    block, parts = _concat_block(split_bytes=10**9)
    plain = ConvBlock(5, 3)
    plain.load_state_dict(block.state_dict())
    assert torch.equal(block(*parts), plain(torch.cat(parts, dim=1)))


def test_concat_block_split_matches_cat_in_value_and_gradient(monkeypatch):
    nbytes = sum(p.numel() * 4 for p in _concat_block(0)[1])
    runs = []
    for split_bytes in (nbytes + 1, nbytes):  # one byte under the limit, then at it
        block, parts = _concat_block(split_bytes)
        out = block(*parts)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        runs.append((out, parts[0].grad, parts[1].grad, block[0].weight.grad, block[0].bias.grad))
    for cat_t, split_t in zip(*runs, strict=True):
        torch.testing.assert_close(split_t, cat_t, rtol=1e-4, atol=1e-5)

    def no_cat(*args, **kwargs):
        raise AssertionError("the split path must not concatenate")
    block, parts = _concat_block(nbytes)
    monkeypatch.setattr(torch, "cat", no_cat)
    block(*parts)  # at the limit: no concatenation built
    block.split_bytes = nbytes + 1
    with pytest.raises(AssertionError, match="must not concatenate"):
        block(*parts)


def test_split_unet_trains_like_the_concatenating_one():
    torch.manual_seed(3)
    x = torch.randn(1, 4, 16, 16, 16)
    grads = []
    for split_bytes in (SPLIT_CONCAT_BYTES, 0):
        torch.manual_seed(1)
        model = Isensee3DUNet(base_filters=4, depth=3, dropout=0.0)
        for block in model.modules():
            if isinstance(block, ConcatConvBlock):
                block.split_bytes = split_bytes
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("limit, pieces", [(2**31 + 1, 1), (2**31, 2), (2**30, 3), (0, 32)])
def test_channel_pieces_keep_the_upsampled_input_under_the_limit(limit, pieces):
    # 32 x (2*128)^3 fp32 upsampled = 2**31 bytes; meta: nothing is allocated
    x = torch.empty(1, 32, 128, 128, 128, device="meta")
    assert channel_pieces(x, 2, limit) == pieces
