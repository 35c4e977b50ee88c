"""The model a :class:`TrainConfig` describes (re-exported by ``loop``)."""

from __future__ import annotations

from typing import Any

import torch

from swapseg.models.unet3d import Isensee3DUNet
from swapseg.training.config import TrainConfig

__all__ = ["model_kwargs", "build_model"]


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {"in_channels": 4, "out_channels": 3, "base_filters": config.base_filters,
            "depth": config.depth, "dropout": config.dropout}


def build_model(config: TrainConfig) -> Isensee3DUNet:
    torch.manual_seed(config.seed)  # the same initial weights for every fold and rerun
    return Isensee3DUNet(**model_kwargs(config))
