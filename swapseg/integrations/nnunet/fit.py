"""Does an nnU-Net patch fit a GPU when swapping? swapseg's answer for the swap planner.

nnU-Net's planners shrink the patch, one axis at a time, until a static estimate of the
network's feature maps fits the memory target. Here the same chain of patches (nnU-Net's
topology, aspect and divisibility rules) starts at the whole median image, and a patch
*fits* when swapseg's planner, on a trace of the real network, finds a plan whose
predicted peak fits the target and whose predicted step is at most ``max_slowdown``
slower than the same step without swapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import (
    get_pool_and_conv_props,
)
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from swapseg.errors import InputError
from swapseg.integrations._plan import MemoryPlan, plan_search

__all__ = ["Verdict", "judge", "portable", "patch_chain", "largest_passing", "network_for",
           "ds_loss", "DEFAULT_PROFILE", "DEFAULT_MAX_SLOWDOWN"]

DEFAULT_PROFILE = "a100-pcie4"
DEFAULT_MAX_SLOWDOWN = 0.15
_MAX_CHAIN = 400  # nnU-Net's own loop has no bound; a degenerate spacing must not spin


@dataclass(frozen=True)
class Verdict:
    """swapseg's prediction for one (batch, channels, *patch) step of one network."""

    patch_size: tuple[int, ...]
    batch_size: int
    fits: bool
    """Some plan's predicted peak fits the budget (after the planner's margin)."""
    slowdown: float
    """The fastest fitting plan's predicted step time over keeping everything, minus 1."""
    plan: MemoryPlan | None
    peak_bytes: int
    step_s: float
    keep_all_peak_bytes: int
    keep_all_step_s: float

    def __post_init__(self) -> None:
        if self.batch_size < 1 or not self.patch_size or min(self.patch_size) < 1:
            raise InputError(f"bad step shape: batch {self.batch_size}, patch {self.patch_size}")
        if self.fits != (self.plan is not None):
            raise InputError("a verdict has a plan exactly when it fits")

    def passes(self, max_slowdown: float) -> bool:
        return self.fits and self.slowdown <= max_slowdown

    def to_dict(self) -> dict[str, Any]:
        return {"patch_size": list(self.patch_size), "batch_size": self.batch_size,
                "fits": self.fits, "plan": self.plan.to_dict() if self.plan else None,
                "predicted_peak_bytes": self.peak_bytes, "predicted_step_s": self.step_s,
                "predicted_slowdown": self.slowdown,
                "keep_all_peak_bytes": self.keep_all_peak_bytes,
                "keep_all_step_s": self.keep_all_step_s}


def ds_loss(output: Any) -> torch.Tensor:
    """A stand-in for nnU-Net's loss over every deep-supervision output (the trace only
    needs what the loss saves, which is small next to the network's activations)."""
    outs = output if isinstance(output, (list, tuple)) else [output]
    return sum((o.float() ** 2).mean() for o in outs)  # type: ignore[return-value]


def network_for(architecture: dict, in_channels: int, out_channels: int) -> torch.nn.Module:
    """nnU-Net's network for a plans ``architecture`` entry, with deep supervision (as it
    trains), built without initialising its weights (the trace uses fake tensors)."""
    return get_network_from_plans(architecture["network_class_name"],
                                  architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], in_channels,
                                  out_channels, allow_init=False, deep_supervision=True)


def judge(network: torch.nn.Module, batch_size: int, in_channels: int,
          patch_size: Sequence[int], budget_bytes: int,
          profile: str = DEFAULT_PROFILE) -> Verdict:
    """swapseg's planner on one nnU-Net step at ``patch_size``, under mixed precision as
    nnU-Net trains on a GPU."""
    patch, batch_size = tuple(int(p) for p in patch_size), int(batch_size)
    ev = plan_search(network, (batch_size, in_channels, *patch), profile,
                     budget_bytes=budget_bytes, loss_fn=ds_loss,
                     autocast_dtype=torch.float16, tier="cuda", require_fit=False)
    r, base = ev.predicted, ev.keep_all
    return Verdict(patch, batch_size, ev.fits, r.step_s / base.step_s - 1,
                   portable(ev.plan) if ev.fits else None, int(r.peak_bytes), float(r.step_s),
                   int(base.peak_bytes), float(base.step_s))


def portable(plan: MemoryPlan) -> MemoryPlan:
    """``plan`` with its swap tier back to ``auto`` (pinned host memory on a GPU, disk on a
    CPU): the planner makes it concrete for the profile's device, the trainer for its own."""
    if plan.swap is None or plan.swap.tier == "auto":
        return plan
    return plan.replace(swap=plan.swap.replace(tier="auto"))


def patch_chain(spacing: Sequence[float], median_shape: Sequence[float],
                start: Sequence[int], min_edge: int) -> list[tuple[list[int], list, list]]:
    """nnU-Net's shrinking loop, unrolled from ``start``: (patch, strides, kernel sizes),
    largest first; each step takes one divisor off the axis longest relative to the
    median shape, then recomputes the topology (as ExperimentPlanner does)."""
    def props(patch: Sequence[int]) -> tuple:
        return get_pool_and_conv_props(list(spacing), list(patch), min_edge, 999999)

    _, strides, kernels, patch, div = props(start)
    chain = [(list(map(int, patch)), strides, kernels)]
    while len(chain) < _MAX_CHAIN:
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape, strict=True)])[-1])
        tmp = list(patch)
        tmp[axis] -= div[axis]
        if tmp[axis] < 2 * min_edge:
            break
        div = props(tmp)[4]
        patch = list(patch)
        patch[axis] -= div[axis]
        if patch[axis] < 2 * min_edge:
            break  # below nnU-Net's smallest feature map twice over: no network to build
        _, strides, kernels, patch, div = props(patch)
        if math.prod(patch) >= math.prod(chain[-1][0]):
            break  # the topology rounded it back up: nnU-Net's loop would spin here
        chain.append((list(map(int, patch)), strides, kernels))
    return chain


def largest_passing(n: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest index in ``range(n)`` that passes, for a chain that passes from some
    index on (larger patches need more memory and more swapping); None when none does."""
    if n == 0 or not passes(n - 1):
        return None
    lo, hi = 0, n - 1  # hi passes
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
