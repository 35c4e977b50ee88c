"""Training precision: Lightning's names, the autocast dtype of each, and fp16's GradScaler.

    "32"          no autocast: every op in float32 (the default)
    "bf16-mixed"  ``torch.autocast(device_type, dtype=torch.bfloat16)`` around forward and
                  loss; bf16 has float32's exponent range, so no loss scaling
    "16-mixed"    ``torch.autocast(device_type, dtype=torch.float16)`` plus
                  ``torch.amp.GradScaler``: the loss is scaled up before backward so that
                  small fp16 gradients do not flush to zero; a step whose gradients hold
                  inf/nan is skipped and the scale backs off

Parameters and optimizer state stay float32 in all three ("mixed"); only the op outputs
inside autocast, and so the activations autograd saves, become 16-bit. Autocast works on
CPU and CUDA for both 16-bit dtypes, and so does the GradScaler.

:data:`PRECISIONS` and :func:`autocast_dtype` are the one mapping from a precision name to
a dtype; the training loop, validation, prediction and the CLI all use it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, get_args

import torch

from swapseg.errors import InputError
from swapseg.offload.measure import autocast as dtype_autocast

__all__ = ["Precision", "PRECISIONS", "autocast_dtype", "check_precision", "autocast",
           "MixedPrecision"]

Precision = Literal["32", "bf16-mixed", "16-mixed"]
"""A training precision, by Lightning's name."""

PRECISIONS: tuple[str, ...] = get_args(Precision)

_DTYPES: dict[str, torch.dtype | None] = {
    "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(precision: str) -> Precision:
    """``precision`` itself when it names a precision; InputError naming the value if not."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    return precision  # type: ignore[return-value]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision``: None for "32" (no autocast)."""
    return _DTYPES[check_precision(precision)]


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast of ``precision`` on ``device_type`` (the engine's and the planner's one
    ``autocast``, at ``precision``'s dtype): a null context for "32"."""
    return dtype_autocast(device_type, autocast_dtype(precision))


class MixedPrecision:
    """One run's precision: its autocast and, for "16-mixed", its GradScaler.

    ``backward_step(loss, optimizer)`` replaces ``loss.backward(); optimizer.step()``; it
    returns False when the scaler skipped the step (inf/nan gradients). ``state_dict()``
    is the scaler's (plain floats and ints, so checkpoints stay ``weights_only``-loadable;
    ``{}`` without a scaler), so a resumed fp16 run goes on with the same scale.
    """

    def __init__(self, precision: str, device_type: str,
                 init_scale: float = 2.0 ** 16) -> None:
        self.precision = check_precision(precision)
        self.device_type = device_type
        self.scaler = (torch.amp.GradScaler(device_type, init_scale=init_scale)
                       if precision == "16-mixed" else None)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device_type)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Backward and optimizer step; False when the step was skipped."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return True
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # update() lowers the scale exactly when step() found inf/nan and skipped
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
