"""SwapPolicy: what the engine swaps and how far ahead it prefetches.

A policy is plain, printable data. It round-trips through JSON, so plans made by the
planner, given on the command line or stored in a run's config.json are the same object.
Field names follow TFLMS where one exists (``n_tensors``, ``lb`` -> ``prefetch``,
``incl_scopes`` -> ``include``, ``excl_scopes`` -> ``exclude``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from swapseg.errors import InputError
from swapseg.records import check_fields, json_object

__all__ = ["SwapPolicy", "TIERS"]

TIERS = ("auto", "cuda", "host", "disk")


@dataclass(frozen=True)
class SwapPolicy:
    n_tensors: int = -1
    """Swap only the first N eligible saved tensors in forward order; -1 swaps all."""

    include: tuple[str, ...] = ()
    """Globs over module qualified names; if non-empty, only tensors saved under a
    matching scope are swapped (TFLMS incl_scopes)."""

    exclude: tuple[str, ...] = ()
    """Globs over module qualified names whose saved tensors stay on the device
    (TFLMS excl_scopes), e.g. ``("decoder.*",)`` keeps the synthesis path resident."""

    min_bytes: int = 0
    """Tensors smaller than this stay on the device: copying them costs more than it saves."""

    prefetch: int = 1
    """How many saved tensors ahead of use a swap-in starts (TFLMS lb). At least 1."""

    swap_branches: bool = False
    """Also swap skip-connection outputs during forward, before the decoder needs them."""

    tier: str = "auto"
    """Where swapped bytes go: ``cuda`` (pinned host memory over side streams), ``host``
    (CPU copies through a thread pool), ``disk`` (files in ``disk_dir``), or ``auto``
    (``cuda`` for CUDA tensors, ``host`` otherwise)."""

    disk_dir: str | None = None
    """Directory of the disk tier; None uses a fresh temporary directory per context."""

    def __post_init__(self) -> None:
        # lists from JSON or the CLI become tuples, so the policy stays hashable
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.n_tensors < -1:
            raise InputError(f"n_tensors must be -1 (all) or >= 0, got {self.n_tensors}")
        if self.min_bytes < 0:
            raise InputError(f"min_bytes must be >= 0, got {self.min_bytes}")
        if self.prefetch < 1:
            raise InputError(f"prefetch must be >= 1, got {self.prefetch}")
        if self.tier not in TIERS:
            raise InputError(f"tier must be one of {', '.join(TIERS)}, got {self.tier!r}")
        if self.disk_dir is not None and self.tier not in ("disk", "auto"):
            raise InputError(f"disk_dir is only used by the disk tier, not {self.tier!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwapPolicy:
        check_fields(cls, d, "SwapPolicy")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> SwapPolicy:
        return cls.from_dict(json_object(text, "policy"))

    def replace(self, **changes: Any) -> SwapPolicy:
        return dataclasses.replace(self, **changes)


