"""What a step does with its saved tensors: swap policy, recompute policy, memory plan.

Each is a small frozen record (:class:`~swapseg.offload.record.Record`) that round-trips
through JSON, so plans made by the planner, given on the command line or stored in a
run's config.json are the same object. Field names follow TFLMS where one exists
(``n_tensors``, ``lb`` -> ``prefetch``, ``incl_scopes`` -> ``include``,
``excl_scopes`` -> ``exclude``).

Scopes are module qualified names; :func:`scope_matches` is the one glob matcher the
engine, the recompute wrapper and the planner's simulator share.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from swapseg.errors import InputError
from swapseg.offload.record import Record, json_object

__all__ = ["SwapPolicy", "RecomputePolicy", "MemoryPlan", "Tier", "TIERS", "ConcreteTier",
           "RecomputeMode", "MODES", "SPEED_KEEP_OPS", "ROOT_SCOPE", "scope_matches",
           "read_plan", "concrete_tier"]

Tier = Literal["auto", "cuda", "host", "disk"]
TIERS: tuple[str, ...] = get_args(Tier)
ConcreteTier = Literal["cuda", "host", "disk"]


def concrete_tier(tier: str, device_type: str) -> ConcreteTier:
    """What ``tier`` means for tensors on a device of type ``device_type`` (``cpu``,
    ``cuda``): the one place that says it, for the engine, the planner and the CLI.

    ``auto`` is the tier that frees that device's memory: pinned host memory over side
    streams (``cuda``) for CUDA tensors, files (``disk``) for CPU tensors, since a copy
    from CPU memory to CPU memory (``host``) frees nothing there. Explicit tiers mean
    themselves; ``cuda`` on a device that is not CUDA is refused.
    """
    if tier not in TIERS:
        raise InputError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if tier == "auto":
        return "cuda" if device_type == "cuda" else "disk"
    if tier == "cuda" and device_type != "cuda":
        raise InputError(f"tier 'cuda' needs CUDA tensors, got device type {device_type!r}")
    return tier  # type: ignore[return-value]
RecomputeMode = Literal["full", "speed"]
MODES: tuple[str, ...] = get_args(RecomputeMode)

#: aten op packets whose outputs the "speed" recompute policy keeps (the expensive ones);
#: everything else inside a checkpointed scope is recomputed. The recompute wrapper and
#: the planner's simulator both read this set, so what is modelled is what runs.
SPEED_KEEP_OPS = frozenset({"aten.convolution", "aten.mm", "aten.addmm", "aten.bmm"})

#: The root module's scope.
ROOT_SCOPE = ""


def scope_matches(scope: str, globs: Iterable[str]) -> bool:
    """True when ``scope`` or one of its ancestor scopes matches one of ``globs``.

    ``decoder.0.loc1.0`` matches ``decoder``, ``decoder.*`` and ``decoder.0.loc1``.
    The root module's scope is the empty string, matched only by ``""`` or ``*``.
    """
    globs = tuple(globs)
    if not globs:
        return False
    parts = scope.split(".") if scope else []
    candidates = [".".join(parts[:i]) for i in range(1, len(parts) + 1)] or [ROOT_SCOPE]
    return any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs)


@dataclass(frozen=True)
class SwapPolicy(Record):
    what = "policy"

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

    tier: Tier = "auto"
    """Where swapped bytes go: ``cuda`` (pinned host memory over side streams), ``host``
    (CPU copies through a thread pool), ``disk`` (files in ``disk_dir``), or ``auto``
    (``cuda`` for CUDA tensors, ``host`` otherwise)."""

    disk_dir: str | None = None
    """Directory of the disk tier; None uses the system temporary directory (the files
    there have no names, so nothing is left behind)."""

    max_inflight_bytes: int = -1
    """Forward waits while more copy-out bytes than this are in flight, so a slow tier
    cannot keep forward's activations alive; a larger bound lets forward run ahead of
    the disk at the cost of that much memory. -1: the tier's default (the engine's
    ``DISK_INFLIGHT_BYTES`` for the disk tier, no bound for the others)."""

    storages: tuple[int, ...] = ()
    """Swap exactly these saved storages, named by their forward index among the unique
    storages the engine's hooks see in one step (the order autograd first saves them;
    parameters and buffers are not counted). Stable for a static graph, so a planner
    can decide per storage. Non-empty: ``n_tensors``, ``include``, ``exclude`` and
    ``min_bytes`` must keep their defaults (they would do nothing)."""

    def __post_init__(self) -> None:
        # lists from JSON or the CLI become tuples, so the policy stays hashable
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "storages", tuple(self.storages))
        self._check_storages()
        if self.n_tensors < -1:
            raise InputError(f"n_tensors must be -1 (all) or >= 0, got {self.n_tensors}")
        if self.min_bytes < 0:
            raise InputError(f"min_bytes must be >= 0, got {self.min_bytes}")
        if self.max_inflight_bytes < -1:
            raise InputError(f"max_inflight_bytes must be -1 (the tier's default) or >= 0, "
                             f"got {self.max_inflight_bytes}")
        if self.prefetch < 1:
            raise InputError(f"prefetch must be >= 1, got {self.prefetch}")
        if self.tier not in TIERS:
            raise InputError(f"tier must be one of {', '.join(TIERS)}, got {self.tier!r}")
        if self.disk_dir is not None and self.tier not in ("disk", "auto"):
            raise InputError(f"disk_dir is only used by the disk tier, not {self.tier!r}")

    def _check_storages(self) -> None:
        if not self.storages:
            return
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0
               for i in self.storages) or list(self.storages) != sorted(set(self.storages)):
            raise InputError("storages must be distinct forward indices >= 0 in increasing "
                             f"order, got {list(self.storages)[:8]}")
        if self.n_tensors != -1 or self.include or self.exclude or self.min_bytes:
            raise InputError("storages names exactly what is swapped: n_tensors, include, "
                             "exclude and min_bytes would do nothing beside it")

    def concrete(self, device_type: str) -> SwapPolicy:
        """This policy with its tier made concrete for ``device_type`` (``concrete_tier``)."""
        tier = concrete_tier(self.tier, device_type)
        return self if tier == self.tier else self.replace(tier=tier)


@dataclass(frozen=True)
class RecomputePolicy(Record):
    what = "recompute policy"

    scopes: tuple[str, ...] = ("*",)
    """Globs over module qualified names (as :func:`scope_matches`). The outermost called
    modules that match are checkpointed (a match inside a matched module is part of it)."""

    mode: RecomputeMode = "full"
    """``full`` recomputes everything inside each scope; ``speed`` keeps the outputs of
    ``SPEED_KEEP_OPS`` (conv, matmul) and recomputes the rest."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", tuple(self.scopes))
        if self.mode not in MODES:
            raise InputError(f"recompute mode must be one of {', '.join(MODES)}, "
                             f"got {self.mode!r}")
        if not self.scopes:
            raise InputError("RecomputePolicy needs at least one scope glob")
        for s in self.scopes:
            if not isinstance(s, str) or not s:
                raise InputError(f"recompute scope must be a non-empty glob, got {s!r}")


@dataclass(frozen=True)
class MemoryPlan(Record):
    """Swap some saved tensors and recompute others, in one training step.

    Inside a recomputed scope autograd's saved tensors go to the checkpoint's own hooks,
    which shadow the swap engine's; so the engine swaps only what is saved outside those
    scopes (and the planner's simulator models exactly that).
    """

    what = "plan"

    swap: SwapPolicy | None = None
    """What the swap engine moves off the device; None swaps nothing."""
    recompute: RecomputePolicy | None = None
    """Which scopes are checkpointed and how; None recomputes nothing."""
    name: str = ""
    """The planner's candidate name (e.g. ``swap-all-pf8``); informational."""
    model_class: str = ""
    """``module:QualName`` of the model the plan was made for (the planner fills it), so
    a reader can tell which network its scopes and storage indices name; "" unknown."""

    def __post_init__(self) -> None:
        if self.swap is not None and not isinstance(self.swap, SwapPolicy):
            raise InputError(f"plan swap must be a SwapPolicy, got {type(self.swap).__name__}")
        if self.recompute is not None and not isinstance(self.recompute, RecomputePolicy):
            raise InputError("plan recompute must be a RecomputePolicy, got "
                             f"{type(self.recompute).__name__}")
        object.__setattr__(self, "name", str(self.name))
        object.__setattr__(self, "model_class", str(self.model_class))

    def concrete(self, device_type: str) -> MemoryPlan:
        """This plan with its swap tier made concrete for ``device_type``: the plan that
        is simulated, run and recorded (``concrete_tier``)."""
        if self.swap is None:
            return self
        swap = self.swap.concrete(device_type)
        return self if swap is self.swap else self.replace(swap=swap)

    @classmethod
    def _decode(cls, d: dict[str, Any]) -> dict[str, Any]:
        if d.get("swap") is not None:
            d["swap"] = SwapPolicy.from_dict(d["swap"])
        if d.get("recompute") is not None:
            d["recompute"] = RecomputePolicy.from_dict(d["recompute"])
        return d


def read_plan(text: str, what: str = "plan") -> MemoryPlan:
    """A plan file's text: ``MemoryPlan`` JSON (what ``swapseg plan`` writes to
    memory_plan.json), or a bare ``SwapPolicy`` JSON, read as a plan that only swaps."""
    d = json_object(text, what)
    if set(d) <= {"swap", "recompute", "name", "model_class"}:
        return MemoryPlan.from_dict(d)
    return MemoryPlan(swap=SwapPolicy.from_dict(d))
