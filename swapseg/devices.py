"""Torch devices by name and what they have free: the one ``resolve_device`` of every
command and the one reader of a device's available memory (:func:`available_memory`)."""

from __future__ import annotations

import os

import torch

from swapseg.errors import InputError
from swapseg.offload.sizes import parse_bytes

__all__ = ["resolve_device", "available_memory", "AVAILABLE_ENV"]

#: A size (e.g. ``2GiB``) that replaces the free memory read from the device, for tests
#: and for users who know better.
AVAILABLE_ENV = "SWAPSEG_AVAILABLE_BYTES"


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


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, where they come from) a step may use on ``device`` now: ``AVAILABLE_ENV``
    when set, else CUDA's free memory, else the machine's ``MemAvailable`` (physical RAM
    where /proc/meminfo cannot be read)."""
    given = os.environ.get(AVAILABLE_ENV)
    if given:
        return parse_bytes(given, AVAILABLE_ENV), f"given by {AVAILABLE_ENV}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemAvailable:"))
        return kib * 1024, "available RAM (MemAvailable in /proc/meminfo)"
    except (OSError, StopIteration, ValueError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(total), "physical RAM (sysconf)"
