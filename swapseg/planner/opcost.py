"""What one traced op costs, from its aten call: FLOPs, a CPU conv's column buffer, and
the layer shape a conv is calibrated by."""

from __future__ import annotations

from typing import Any

from torch.utils.flop_counter import flop_registry

__all__ = ["op_flops", "cpu_workspace", "conv_key"]


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> float:
    fn = flop_registry.get(func._overloadpacket)
    if fn is None:
        return 0.0
    return float(fn(*args, **kwargs, out_val=out))


def cpu_workspace(name: str, args: tuple) -> int:
    """Bytes a CPU conv (or batch norm's backward) allocates while it runs, beyond its
    inputs and outputs.

    ATen's ``ConvParams::use_mkldnn`` takes oneDNN for a float CPU conv when batch > 1,
    or kernels > 3, or B*C*D*H > 20480 (``_onednn_bytes``); otherwise the native path
    (``slow_conv3d``, ``slow_conv_transpose3d``) unfolds into a column buffer, in forward
    and again in backward.
    """
    if name == "aten.native_batch_norm_backward":
        # a second input-sized buffer beside grad_input (instance norm runs on it too)
        return int(args[1].numel() * args[1].element_size())
    if name == "aten.convolution":
        x, w, stride, dilation, transposed = args[0], args[1], args[3], args[5], args[6]
        out_vox = _out_voxels(x, w, stride, args[4], dilation, transposed, args[7])
        grad_out = None
    elif name == "aten.convolution_backward":
        x, w, stride, dilation, transposed = args[1], args[2], args[4], args[6], args[7]
        grad_out = args[0]
        out_vox = grad_out.shape[2:].numel()
    else:
        return 0
    if x.dim() not in (4, 5) or not x.is_floating_point():
        return 0
    grouped = w.shape[1] != x.shape[1] and not transposed
    native = x.dim() == 5 and x.shape[0] == 1 and max(w.shape[2:]) <= 3 and not grouped \
        and x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= 20480
    if native:  # columns: C_in * k^3 * output voxels (transposed: C_out * k^3 * input)
        c = w.shape[1] if transposed else x.shape[1]
        vox = x.shape[2:].numel() if transposed else out_vox
        return int(c * w.shape[2:].numel() * vox * x.element_size())
    c_out = w.shape[1] if transposed else w.shape[0]
    return _onednn_bytes(x, c_out, out_vox, grad_out is not None,
                         any(s > 1 for s in stride), any(d > 1 for d in dilation), transposed)


def _onednn_bytes(x: Any, c_out: int, out_vox: int, backward: bool, strided: bool,
                  dilated: bool, transposed: bool) -> int:
    """oneDNN's reorders into its blocked layout (channels padded to 16 from 8 up): the
    input, the output and the gradients pass through copies of their own while the op
    runs. Fitted to the profiler's allocations of torch 2.13's CPU convolutions
    (2-D and 3-D, strided, dilated, transposed, 1 to 64 channels)."""
    def pad(c: int) -> int:
        return c if c < 8 else -(-c // 16) * 16

    b, item = x.shape[0], x.element_size()
    in_p = b * pad(x.shape[1]) * x.shape[2:].numel() * item
    out_p = b * pad(c_out) * out_vox * item
    if not backward:
        return 2 * out_p if transposed else max(in_p, out_p)
    if dilated:
        return in_p
    return in_p + (in_p if strided and not transposed else out_p)


def _out_voxels(x: Any, w: Any, stride: Any, padding: Any, dilation: Any,
                transposed: bool, output_padding: Any) -> int:
    out = 1
    for i, d in enumerate(x.shape[2:]):
        k = dilation[i] * (w.shape[2 + i] - 1) + 1
        if transposed:
            out *= (d - 1) * stride[i] - 2 * padding[i] + k + output_padding[i]
        else:
            out *= (d + 2 * padding[i] - k) // stride[i] + 1
    return out


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
