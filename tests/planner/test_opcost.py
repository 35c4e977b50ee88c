"""A CPU op's own working bytes (``opcost.cpu_workspace``), worked out by hand
for each path ATen takes; the figures match torch 2.13's profiler allocations."""

import torch

from swapseg.planner.opcost import cpu_workspace

MIB = 2**20


def _args(x_shape, c_out, k, stride=1, dilation=1, transposed=False, nd=3, grad_in=True):
    x = torch.empty(x_shape, device="meta")
    w_shape = (x_shape[1], c_out) if transposed else (c_out, x_shape[1])
    w = torch.empty((*w_shape, *(k,) * nd), device="meta")
    pad = (k // 2 * dilation,) * nd if not transposed else (0,) * nd
    st, dil, outpad = (stride,) * nd, (dilation,) * nd, (0,) * nd
    fwd = (x, w, None, st, pad, dil, transposed, outpad, 1)
    y = torch.nn.functional.conv_transpose3d(x, w, stride=st) if transposed else \
        (torch.nn.functional.conv3d if nd == 3 else torch.nn.functional.conv2d)(
            x, w, stride=st, padding=pad, dilation=dil)
    bwd = (y, x, w, None, st, pad, dil, transposed, outpad, 1, [grad_in, True, False])
    return cpu_workspace("aten.convolution", fwd), \
        cpu_workspace("aten.convolution_backward", bwd)


def test_onednn_conv_holds_a_blocked_copy_of_input_or_output_and_both_in_backward():
    # 16 -> 16 channels at 64^3: each map is 16 MiB
    assert _args((1, 16, 64, 64, 64), 16, 3) == (16 * MIB, 32 * MIB)
    # 32 -> 16: forward the larger map (the input), backward input + output
    assert _args((1, 32, 64, 64, 64), 16, 3) == (32 * MIB, 48 * MIB)
    # stride 2: backward holds the input-sized map twice (output is 4 MiB)
    assert _args((1, 16, 64, 64, 64), 32, 3, stride=2) == (16 * MIB, 32 * MIB)
    # channels pad to 16 from 8 up: 24 channels at 48^3 count as 32
    fwd, bwd = _args((1, 24, 48, 48, 48), 16, 3)
    assert fwd == 32 * 48**3 * 4 and bwd == (32 + 16) * 48**3 * 4
    # dilated: backward holds the input only; 2-D the same rule as 3-D
    assert _args((1, 16, 48, 48, 48), 16, 3, dilation=2)[1] == 16 * 48**3 * 4
    assert _args((1, 16, 512, 512), 16, 3, nd=2) == (16 * MIB, 32 * MIB)


def test_native_path_unfolds_columns_and_transposed_onednn_doubles_the_output():
    # B*C*D*H = 1*1*64*64 <= 20480: slow_conv3d, 1 channel * 27 * 64^3 floats
    assert _args((1, 1, 64, 64, 64), 16, 3, grad_in=False) == (27 * MIB, 27 * MIB)
    # transposed 32 -> 16, k2 s2, 32^3 -> 64^3 (oneDNN): forward twice the 16 MiB output
    assert _args((1, 32, 32, 32, 32), 16, 2, stride=2, transposed=True) == (32 * MIB,
                                                                            20 * MIB)
    # transposed 64 -> 32 at 16^3 (native): columns of 32 * 8 * 16^3 floats
    assert _args((1, 64, 16, 16, 16), 32, 2, stride=2, transposed=True) == (4 * MIB, 4 * MIB)


def test_batch_norm_backward_holds_a_second_input_sized_buffer():
    x = torch.empty((1, 16, 64, 64, 64), device="meta")  # 16 MiB
    args = (x, x, None, None, None, None, None, True, 1e-5, [True, True, True])
    assert cpu_workspace("aten.native_batch_norm_backward", args) == 16 * MIB
    assert cpu_workspace("aten.native_batch_norm", (x,)) == 0
