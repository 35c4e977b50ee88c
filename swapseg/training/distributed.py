"""Data-parallel training through ``torchrun`` (torch.distributed, DDP).

``torchrun --nproc_per_node N -m swapseg.cli train ...`` sets WORLD_SIZE, RANK and
LOCAL_RANK; :func:`init_from_env` then joins the process group (NCCL on CUDA, gloo on
CPU). Each rank trains on its share of the cases (``DistributedSampler``), gradients are
averaged by DDP, rank 0 validates, writes files and broadcasts the validation loss so
that every rank's scheduler and early stopping take the same decisions.
Without WORLD_SIZE > 1 everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, Sampler

__all__ = ["DistInfo", "init_from_env", "wrap_model", "make_sampler", "broadcast_floats",
           "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    """Global rank of this process."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this node; picks the CUDA device."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment, if WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return info


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` when distributed; the bare model otherwise."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def make_sampler(dataset: Dataset, info: DistInfo, seed: int,
                 generator: torch.Generator) -> Sampler:
    """Shuffling sampler: each rank's share when distributed. Call ``set_epoch`` on it
    (DistributedSampler) or reseed ``generator`` (RandomSampler) at each epoch."""
    if info.enabled:
        return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                  shuffle=True, seed=seed, drop_last=False)
    return RandomSampler(dataset, generator=generator)


def broadcast_floats(values: list[float], info: DistInfo) -> list[float]:
    """Rank 0's ``values`` on every rank."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
