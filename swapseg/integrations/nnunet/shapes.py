"""The whole-image patch of nnU-Net plans (the paper's "no patching" inside nnU-Net)."""

from __future__ import annotations

import copy
import math

from swapseg.errors import InputError

__all__ = ["divisor", "full_image_patch", "full_image_plans"]


def _resolved(plans: dict, configuration: str) -> dict:
    """The configuration's dict with ``inherits_from`` applied (as nnU-Net's PlansManager)."""
    confs = plans.get("configurations", {})
    if configuration not in confs:
        raise InputError(f"configuration {configuration!r} is not in the plans "
                         f"(has {', '.join(confs) or 'none'})")
    conf = confs[configuration]
    parent = conf.get("inherits_from")
    return {**_resolved(plans, parent), **conf} if parent else dict(conf)


def _strides(conf: dict) -> list[list[int]]:
    arch = conf.get("architecture", {}).get("arch_kwargs", {})
    strides = arch.get("strides", conf.get("pool_op_kernel_sizes"))
    if strides is None:
        raise InputError("the plans' configuration names no strides (architecture.arch_kwargs)")
    dims = len(conf["patch_size"])
    return [[s] * dims if isinstance(s, int) else list(s) for s in strides]


def divisor(conf: dict) -> list[int]:
    """Per axis, the product of the network's strides: every patch side is a multiple."""
    return [math.prod(axis) for axis in zip(*_strides(conf), strict=True)]


def full_image_patch(conf: dict) -> list[int]:
    """The median image shape, each side rounded up to the network's divisor."""
    median = conf.get("median_image_size_in_voxels")
    if not median:
        raise InputError("the plans' configuration has no median_image_size_in_voxels")
    return [int(math.ceil(m / d) * d) for m, d in zip(median, divisor(conf), strict=True)]


def full_image_plans(plans: dict, configuration: str) -> dict:
    """A copy of ``plans`` whose ``configuration`` trains on whole (median-sized) images."""
    out = copy.deepcopy(plans)
    out["configurations"][configuration]["patch_size"] = \
        full_image_patch(_resolved(plans, configuration))
    return out
