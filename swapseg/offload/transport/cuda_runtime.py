"""The primitives the cuda transport takes from a runtime: real ``torch.cuda`` by default.

The transport names no ``torch.cuda`` function itself; it asks a ``CudaRuntime`` for
streams, events, device and pinned buffers, non-blocking copies and ``record_stream``.
``TorchCuda`` forwards each to ``torch.cuda``; a test double (tests/offload/_cuda_double.py)
implements the same calls on CPU tensors, completes the queued copies late and in random
orders, and checks the stream protocol on every call. ``check_idle`` is the one call that
exists for the double: the real runtime has nothing to check.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["CudaRuntime", "TorchCuda", "pin_memory_enabled", "pinned_reserved_bytes"]


def pin_memory_enabled() -> bool:
    """False when ``SWAPSEG_PIN_MEMORY=0``: the cuda tier then uses pageable host buffers."""
    return os.environ.get("SWAPSEG_PIN_MEMORY", "1").strip() not in ("0", "false", "no")


def pinned_reserved_bytes(nbytes: int) -> int:
    """What PyTorch's pinned host allocator reserves for ``nbytes``: the next power of two."""
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()


@runtime_checkable
class CudaRuntime(Protocol):
    """Streams, events, buffers and copies, as the cuda transport uses them."""

    def Stream(self, device: torch.device) -> Any:
        """A new stream on ``device`` (``wait_stream``, ``wait_event``, ``synchronize``)."""
        ...

    def Event(self, enable_timing: bool = False) -> Any:
        """A new event (``record``, ``query``, ``synchronize``, ``elapsed_time``)."""
        ...

    def current_stream(self, device: torch.device) -> Any:
        ...

    def stream(self, s: Any) -> AbstractContextManager[Any]:
        """Make ``s`` the current stream inside the block."""
        ...

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A flat uint8 device buffer, allocated on the current stream."""
        ...

    def pinned(self, nbytes: int) -> torch.Tensor:
        """A flat uint8 page-locked host buffer; raises RuntimeError if pinning fails."""
        ...

    def copy(self, dest: torch.Tensor, src: torch.Tensor) -> None:
        """``dest.copy_(src)`` queued on the current stream, not waited for by the host."""
        ...

    def record_stream(self, t: torch.Tensor, s: Any) -> None:
        """``t``'s device block is not reused after it is freed until ``s``'s work queued
        so far has finished (the caching allocator's rule)."""
        ...

    def check_idle(self, buf: torch.Tensor, what: str) -> None:
        """A host buffer is about to be ``what`` (reused, pooled): no copy may touch it."""
        ...


class TorchCuda:
    """The real runtime: ``torch.cuda``, one-to-one."""

    def Stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device)

    def Event(self, enable_timing: bool = False) -> Any:
        return torch.cuda.Event(enable_timing=enable_timing)

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def stream(self, s: Any) -> AbstractContextManager[Any]:
        return torch.cuda.stream(s)

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def pinned(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def copy(self, dest: torch.Tensor, src: torch.Tensor) -> None:
        dest.copy_(src, non_blocking=True)

    def record_stream(self, t: torch.Tensor, s: Any) -> None:
        t.record_stream(s)

    def check_idle(self, buf: torch.Tensor, what: str) -> None:
        """Nothing to check on a real device: the events guarantee it."""
