"""The one predictor: region logits of a whole volume, in one pass or by sliding windows.

Validation inside training (:mod:`swapseg.training.validation`) and test-time prediction
(:mod:`swapseg.predict.inference`) both call :func:`predict_logits`, so a checkpoint is
chosen on the numbers it will be reported with.

- One pass: the whole volume, zero-padded at the far end of each axis up to a multiple of
  the network's divisor, cropped back after.
- Windows: MONAI's ``sliding_window_inference`` at the window side, ``overlap`` between
  neighbours, Gaussian blending. A window that covers the whole volume is one pass.
- Blending and test-time augmentation (the 8 flips of the three axes) average *logits*,
  as nnU-Net v2 does; probabilities are the sigmoid of the result and a voxel is in a
  region when its logit is above 0 (probability 0.5).

How ``auto`` chooses (:func:`choose_window`): one pass when its predicted activation bytes
fit in ``MEMORY_FRACTION`` of the memory available on the model's device (free CUDA
memory, or the machine's ``MemAvailable`` on a CPU), windows otherwise. The prediction is
a rule of thumb: ``ACTIVATION_MAPS`` feature maps of the network's first-level width, in
float32, at every voxel of the padded volume (without gradients only the skip connections
and the working set of one level are alive, and the full-resolution level dominates), plus
``WORKSPACE_BYTES`` for the runtime's own buffers. ``benchmarks/predict_memory.py`` checks
it against the measured peak (results in ``benchmarks/results/``).
``one-pass`` and ``windows`` force either.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from swapseg.devices import available_memory
from swapseg.errors import InputError

__all__ = ["Inference", "INFERENCE_MODES", "ACTIVATION_MAPS", "WORKSPACE_BYTES",
           "MEMORY_FRACTION",
           "predict_logits", "choose_window", "predicted_bytes", "available_bytes",
           "divisor_of"]

Inference = Literal["auto", "one-pass", "windows"]
INFERENCE_MODES: tuple[Inference, ...] = ("auto", "one-pass", "windows")
#: Feature maps of the first level's width alive at once per voxel (the rule of thumb).
ACTIVATION_MAPS = 8
#: Allowance for the runtime's own buffers (kernels' scratch space, allocator slack).
WORKSPACE_BYTES = 256 * 2**20
#: Share of the available memory a one-pass prediction may take under ``auto``.
MEMORY_FRACTION = 0.5

Window = tuple[int, int, int]


def divisor_of(model: nn.Module) -> int:
    """What every spatial size must be a multiple of (the U-Net's ``divisor``; 1 if none)."""
    return int(getattr(model, "divisor", 1))


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _first_width(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv3d)), None)
    return conv.out_channels if conv is not None else 1


def predicted_bytes(model: nn.Module, spatial: Sequence[int]) -> int:
    """Predicted peak activation bytes of one pass over ``spatial`` (see module docstring)."""
    div = divisor_of(model)
    voxels = math.prod(-(-int(s) // div) * div for s in spatial)
    return voxels * _first_width(model) * 4 * ACTIVATION_MAPS + WORKSPACE_BYTES


def available_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, or the machine's available RAM (the one reader,
    ``swapseg.devices.available_memory``)."""
    return available_memory(device)[0]


def _as_window(window: int | Sequence[int], divisor: int) -> Window:
    w = (int(window),) * 3 if isinstance(window, (int,)) else tuple(int(v) for v in window)
    if len(w) != 3 or min(w) <= 0 or any(v % divisor for v in w):
        side = w[0] if len(set(w)) == 1 else "x".join(map(str, w))
        raise InputError(f"window {side} (--window) must be a positive multiple of the "
                         f"network's divisor {divisor}")
    return w  # type: ignore[return-value]


def choose_window(model: nn.Module, spatial: Sequence[int], inference: Inference,
                  window: int | Sequence[int] | None) -> tuple[Window | None, dict]:
    """``(window or None for one pass, the facts the choice was made on)``."""
    if inference not in INFERENCE_MODES:
        raise InputError(f"inference must be one of {', '.join(INFERENCE_MODES)}, "
                         f"got {inference!r}")
    win = None if window is None else _as_window(window, divisor_of(model))
    need = predicted_bytes(model, spatial)
    facts = {"predicted_one_pass_bytes": need}
    if inference == "one-pass":
        return None, facts
    if win is None:
        raise InputError("windows need a window side (--window N)")
    if all(s <= w for s, w in zip(spatial, win, strict=True)):
        return None, facts  # one window holds it all: that is one pass
    if inference == "windows":
        return win, facts
    have = available_bytes(_device(model))
    facts["available_bytes"] = have
    return (None if need <= MEMORY_FRACTION * have else win), facts


def _one_pass(model: nn.Module, x: torch.Tensor, divisor: int) -> torch.Tensor:
    spatial = x.shape[2:]
    pad = [(-s) % divisor for s in spatial]
    if any(pad):
        # F.pad lists pads from the last axis backwards, (before, after) per axis
        x = nn.functional.pad(x, [p for d in reversed(pad) for p in (0, d)])
    return model(x)[(..., *(slice(0, s) for s in spatial))].float()


def _windowed(model: nn.Module, x: torch.Tensor, window: Window,
              overlap: float) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, roi_size=window, sw_batch_size=1,
                                    predictor=lambda b: model(b).float(), overlap=overlap,
                                    mode="gaussian")


def predict_logits(model: nn.Module, x: torch.Tensor,
                   window: int | Sequence[int] | None = None, overlap: float = 0.5,
                   tta: bool = False) -> torch.Tensor:
    """Region logits float32 ``(B, R, D, H, W)`` of ``x`` ``(B, C, D, H, W)``.

    ``window=None``: one pass; else sliding windows of that side. The model runs in eval
    mode without gradients; its mode is restored after.
    """
    divisor = divisor_of(model)
    win = None if window is None else _as_window(window, divisor)
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if x.dim() != 5:
        raise InputError(f"image batch must be (B, C, D, H, W), got shape {tuple(x.shape)}")
    if win is not None and all(s <= w for s, w in zip(x.shape[2:], win, strict=True)):
        win = None  # one window holds it all
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [c for k in range(4) for c in itertools.combinations((2, 3, 4), k)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total: torch.Tensor | None = None
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                y = _one_pass(model, xi, divisor) if win is None \
                    else _windowed(model, xi, win, overlap)
                y = torch.flip(y, axes) if axes else y
                total = y if total is None else total + y
    finally:
        model.train(was_training)
    assert total is not None
    return total / len(flips)
