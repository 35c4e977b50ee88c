"""Torch devices by name: the one ``resolve_device`` of every command."""

from __future__ import annotations

import torch

from swapseg.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> ``cuda:<local_rank>``.

    Raises InputError naming the device when it is not a device or not on this machine.
    """
    if isinstance(name, torch.device):
        name = str(name)
    given = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {given}: not a device (auto, cpu, cuda or cuda:N)"
                         ) from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"--device {given}: no such CUDA device on this machine "
                         "(use --device cpu)")
    return device
