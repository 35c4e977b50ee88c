"""The user's loss as the planner sees it: bound to a target, traced, or stood in for.

A loss is ``loss_fn(output)`` or, with a target description, ``loss_fn(output, target)``.
The target is described, not given: ``(shape, dtype)`` of the target at the traced input
shape (its trailing spatial sides follow the output's at any other shape, so calibration
at a smaller shape gets a matching target), or a function of the output. The planner
builds it as zeros (fake under the tracer, real in calibration).

Losses with data-dependent Python (``.item()``, ``.tolist()``, MONAI's Dice family)
cannot run on fake tensors. For those the tracer measures the loss once on real tensors
at a small output shape (its saved bytes per output byte, and whether it keeps the
output itself) and stands in for it with one op that saves as many bytes, scaled to the
traced output (``surrogate_loss``). The loss's transient working set is not counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from swapseg.errors import InputError

__all__ = ["Target", "bind_target", "like_output", "LossSaved", "measure_loss_saved",
           "surrogate_loss", "small_like", "real_tensors"]

#: A target description: ``(shape, dtype)`` at the traced input shape, or a function of
#: the model's output returning the target tensor.
Target = tuple[tuple[int, ...], torch.dtype] | Callable[[Any], torch.Tensor]

#: Largest spatial side of the output the loss is measured at.
SMALL_SIDE = 8


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    parts = out.values() if isinstance(out, dict) else out
    for p in parts:
        if isinstance(p, torch.Tensor):
            return p
    raise InputError(f"the model's output ({type(out).__name__}) holds no tensor to "
                     "build a target like")


def _make_target(target: Target, out: Any) -> torch.Tensor:
    if callable(target):
        return target(out)
    shape, dtype = target
    ref = _first_tensor(out)
    spatial = ref.dim() - 2
    if len(shape) < spatial:
        raise InputError(f"target shape {tuple(shape)}: fewer dimensions than the "
                         f"output's {spatial} spatial ones")
    full = (*shape[:len(shape) - spatial], *ref.shape[2:]) if spatial > 0 else tuple(shape)
    return torch.zeros(full, dtype=dtype, device=ref.device)


def like_output(dtype: torch.dtype = torch.float32) -> Callable[[Any], torch.Tensor]:
    """A target description: zeros shaped like the model's (first) output, at ``dtype``
    (a one-hot or dense target, as MONAI's losses take without ``to_onehot_y``)."""
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"like_output needs a torch dtype, got {dtype!r}")

    def build(out: Any) -> torch.Tensor:
        ref = _first_tensor(out)
        return torch.zeros(ref.shape, dtype=dtype, device=ref.device)
    return build


def bind_target(loss_fn: Callable[..., torch.Tensor] | None, target: Target | None
                ) -> Callable[[Any], torch.Tensor] | None:
    """``loss_fn`` as a one-argument loss: ``target`` built from the output and passed
    second. Without a target, ``loss_fn`` itself; a target without a loss is an error."""
    if target is None:
        return loss_fn
    if loss_fn is None:
        raise InputError("a target was given but no loss to take it: pass loss_fn too")
    if not callable(target):
        shape, dtype = target
        if not isinstance(dtype, torch.dtype) or not all(int(s) > 0 for s in shape):
            raise InputError(f"target {target!r}: expected (shape of positive sides, "
                             "torch dtype) or a function of the output")
    return lambda out: loss_fn(out, _make_target(target, out))


@dataclass(frozen=True)
class LossSaved:
    """What a loss saves for backward, per byte of the model's output."""

    extra_per_out_byte: float
    """Bytes of saved storages that are not the output's, per output byte."""
    keeps_output: bool
    """Whether the loss saves the output tensor(s) themselves."""
    shape: tuple[int, ...]
    """The (first) output shape it was measured at."""

    def __post_init__(self) -> None:
        if not self.extra_per_out_byte >= 0:
            raise InputError(f"loss saved bytes per output byte must be >= 0, got "
                             f"{self.extra_per_out_byte}")


def small_like(t: torch.Tensor, side: int = SMALL_SIDE) -> tuple[int, ...]:
    """``t``'s shape with every spatial side cut to at most ``side``."""
    return (*t.shape[:2], *(min(int(s), side) for s in t.shape[2:]))


def _map(out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, dict):
        return {k: _map(v, fn) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_map(v, fn) for v in out)
    return out


def _measure_at(loss_fn: Callable[[Any], torch.Tensor], meta: Any,
                shape_of: Callable[[torch.Tensor], tuple[int, ...]]) -> LossSaved:
    gen = torch.Generator().manual_seed(0)
    real = _map(meta, lambda t: torch.randn(shape_of(t), generator=gen).to(t.dtype)
                .requires_grad_(t.requires_grad))
    outs = [t for t in _leaves(real)]
    out_keys = {t.untyped_storage()._cdata for t in outs}
    saved: dict[int, int] = {}
    keeps = False

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal keeps
        key = t.untyped_storage()._cdata
        if key in out_keys:
            keeps = True
        else:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(real)
    del loss
    out_bytes = sum(t.numel() * t.element_size() for t in outs)
    return LossSaved(sum(saved.values()) / max(out_bytes, 1), keeps,
                     tuple(_first_tensor(real).shape))


def _leaves(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from _leaves(v)
    elif isinstance(out, dict):
        for v in out.values():
            yield from _leaves(v)


def measure_loss_saved(loss_fn: Callable[[Any], torch.Tensor], meta: Any) -> LossSaved:
    """Run ``loss_fn`` once on real random outputs shaped like ``meta`` (tensors or
    structures of them, fake ones included) and count what it saves: first at a small
    shape (spatial sides cut to ``SMALL_SIDE``), and at the full shape when it fails
    there (a loss closing over a full-size target)."""
    try:
        with torch.random.fork_rng(devices=[]):
            return _measure_at(loss_fn, meta, small_like)
    except Exception:  # noqa: BLE001 - any failure at the small shape: try the full one
        pass
    try:
        with torch.random.fork_rng(devices=[]):
            return _measure_at(loss_fn, meta, lambda t: tuple(t.shape))
    except Exception as exc:  # noqa: BLE001 - the user's loss may raise anything
        raise InputError(f"the loss cannot be traced on fake tensors and fails on real "
                         f"ones too: {str(exc).splitlines()[0]}") from None


class _StandIn(torch.autograd.Function):
    """One op for the loss: saves ``extra`` bytes (and the outputs when the loss keeps
    them) and hands every output a gradient of its shape."""

    @staticmethod
    def forward(ctx: Any, extra_numel: int, keep: bool, *outs: torch.Tensor
                ) -> torch.Tensor:
        buf = outs[0].new_empty((max(extra_numel, 0),))
        ctx.shapes = [(o.shape, o.dtype) for o in outs]
        ctx.save_for_backward(buf, *(outs if keep else ()))
        return outs[0].new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        ctx.saved_tensors  # noqa: B018 - unpacked as the real loss's backward would
        return (None, None, *(grad.new_zeros(s, dtype=d) for s, d in ctx.shapes))


def surrogate_loss(out: Any, saved: LossSaved) -> torch.Tensor:
    """The stand-in for a loss measured by ``measure_loss_saved``, on ``out``."""
    outs = list(_leaves(out))
    if not outs:
        raise InputError("the model's output holds no tensor for the loss")
    out_bytes = sum(t.numel() * t.element_size() for t in outs)
    extra = int(saved.extra_per_out_byte * out_bytes) // outs[0].element_size()
    return _StandIn.apply(extra, saved.keeps_output, *outs)


@contextlib.contextmanager
def real_tensors() -> Iterator[None]:
    """Leave every dispatch mode (the fake one and the tracer's) for the block."""
    with _disable_current_modes():
        yield
