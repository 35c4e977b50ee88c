"""The model and device a :class:`TrainConfig` describes (re-exported by ``loop``)."""

from __future__ import annotations

from typing import Any

import torch

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.training.config import TrainConfig

__all__ = ["model_kwargs", "build_model", "resolve_device"]


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {"in_channels": 4, "out_channels": 3, "base_filters": config.base_filters,
            "depth": config.depth, "dropout": config.dropout}


def build_model(config: TrainConfig) -> Isensee3DUNet:
    torch.manual_seed(config.seed)  # the same initial weights for every fold and rerun
    return Isensee3DUNet(**model_kwargs(config))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device {name!r} is not available on this machine")
    return device
