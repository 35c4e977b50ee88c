"""Checkpoints and RNG state: everything ``--resume`` needs, written atomically.

A checkpoint is a plain dict saved with ``torch.save``:

    epoch          epochs completed (the resumed run starts at this epoch index)
    global_step    optimizer steps taken
    model          state_dict of the bare model (never the DDP wrapper)
    model_kwargs   keyword arguments of ``Isensee3DUNet`` to rebuild it
    optimizer, scheduler, early_stop, rng
    config         the resolved TrainConfig as a dict
    val            validation metrics of the last epoch

Files are written through :func:`swapseg.io.atomic_path`, so a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swapseg.errors import InputError
from swapseg.io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; InputError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        # our own files hold numpy RNG arrays and plain dicts, not arbitrary objects
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(f"{path}: not a swapseg checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict[str, Any]:
    """The state of every RNG the training process draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
