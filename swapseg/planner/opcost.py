"""What one traced op costs, from its aten call: FLOPs, a CPU conv's column buffer, and
the layer shape a conv is calibrated by."""

from __future__ import annotations

from typing import Any

from torch.utils.flop_counter import flop_registry

__all__ = ["op_flops", "cpu_conv_workspace", "conv_key"]


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> float:
    fn = flop_registry.get(func._overloadpacket)
    if fn is None:
        return 0.0
    return float(fn(*args, **kwargs, out_val=out))


def cpu_conv_workspace(name: str, args: tuple) -> int:
    """Column buffer of PyTorch's native (non-oneDNN) 3D conv, when a CPU would pick it.

    ATen's ``ConvParams::use_mkldnn`` takes oneDNN for a float CPU conv when batch > 1,
    or kernels > 3, or B*C*D*H > 20480; otherwise ``slow_conv3d`` unfolds the input into
    C_in * prod(kernel) * out_voxels floats, in forward and again in backward.
    """
    if name == "aten.convolution":
        x, w = args[0], args[1]
    elif name == "aten.convolution_backward":
        x, w = args[1], args[2]
    else:
        return 0
    if x.dim() != 5 or x.shape[0] > 1 or max(w.shape[2:]) > 3 or w.shape[1] != x.shape[1]:
        return 0  # batched, grouped or large kernels: oneDNN
    if x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] > 20480:
        return 0
    if name == "aten.convolution_backward":
        out_vox = args[0].shape[2:].numel()  # grad_output's voxels
    else:  # forward: output voxels from input size and stride (padding keeps "same")
        out_vox = 1
        for d, s in zip(x.shape[2:], args[3], strict=True):
            out_vox *= -(-d // s)
    return int(x.shape[1] * w.shape[2:].numel() * out_vox * x.element_size())


def conv_key(name: str, args: tuple) -> str:
    if name == "aten.convolution":
        x, w, stride = args[0], args[1], args[3]
    elif name == "aten.convolution_backward":
        x, w, stride = args[1], args[2], args[4]
    else:
        return ""
    if x.dim() < 3:
        return ""
    return ",".join(str(int(v)) for v in (x.shape[1], w.shape[0], w.shape[2], stride[0],
                                          *x.shape[2:]))
