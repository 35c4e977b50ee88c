"""The model a :class:`TrainConfig` describes (re-exported by ``loop``), built by the model
registry (``swapseg.models.registry``), the one builder of every command."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from swapseg.models.registry import DEFAULT_MODEL
from swapseg.models.registry import build_model as build_registered
from swapseg.training.config import TrainConfig

__all__ = ["model_kwargs", "build_model"]


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {"in_channels": 4, "out_channels": 3, "base_filters": config.base_filters,
            "depth": config.depth, "dropout": config.dropout}


def build_model(config: TrainConfig) -> nn.Module:
    torch.manual_seed(config.seed)  # the same initial weights for every fold and rerun
    return build_registered(DEFAULT_MODEL, model_kwargs(config))
