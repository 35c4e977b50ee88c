"""The life of one saved storage in the engine: a named state with legal transitions only.

    device ──> leaving ──> host ──> returning ──> back ──> host ...
      │           │ └──────────────────────────> back      (its unpack used the source)
      │           └──> device                              (the copy-out failed)
      └──> spent                                           (kept: its backward use is over)
    any state ──> released                                 (autograd freed the last handle)

- ``device``: on the device, held by the engine (a kept storage, or a swapped one whose
  copy-out failed);
- ``leaving``: copy-out in flight; the source is still on the device;
- ``host``: only the transport's copy exists (host buffer or file);
- ``returning``: copy-in in flight; its destination is allocated on the device;
- ``back``: on the device again (a reloaded copy, or the source when its unpack came
  before its copy-out had finished);
- ``spent``: a kept storage after its last unpack in a backward: autograd may still hold
  it, the engine no longer counts it;
- ``released``: gone; a late unpack raises.

Resident bytes follow from the state: an entry counts ``nbytes`` while its state is in
``RESIDENT``, and ``Entry.move`` returns the change, so the engine's only resident
counter changes with the transitions and nowhere else. An illegal transition raises
``IllegalTransition``: a bug in the engine, never a user error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["State", "TRANSITIONS", "RESIDENT", "IllegalTransition", "Entry"]

State = Literal["device", "leaving", "host", "returning", "back", "spent", "released"]

TRANSITIONS: dict[State, frozenset[State]] = {
    "device": frozenset({"leaving", "spent", "released"}),
    "leaving": frozenset({"host", "back", "device", "released"}),
    "host": frozenset({"returning", "released"}),
    "returning": frozenset({"back", "host", "released"}),
    "back": frozenset({"host", "released"}),
    "spent": frozenset({"released"}),
    "released": frozenset(),
}

#: States in which the entry's bytes are on the device by the engine's bookkeeping.
RESIDENT: frozenset[State] = frozenset({"device", "leaving", "returning", "back"})


class IllegalTransition(RuntimeError):
    """The engine tried a state change its lifecycle does not allow."""


@dataclass(eq=False)
class Entry:
    """One unique saved storage and where its bytes are.

    ``device_tensor`` is a uint8 view of the storage while it is on the device (kept,
    being copied out, or back); ``stored`` is the transport's copy (a host buffer or a
    file) once copy-out has finished.
    """

    id: int
    index: int
    """Position among the entries created in this step (forward order)."""
    scope: str
    nbytes: int
    device: torch.device
    swap: bool
    state: State = "device"
    device_tensor: torch.Tensor | None = None
    stored: Any = None
    out_ticket: Any = None
    in_ticket: Any = None
    reloaded: bool = False
    """``device_tensor`` is a copy brought back (not the forward's own storage)."""
    n_live: int = 0
    n_unpacked: int = 0
    backward_no: int = -1
    """The engine's backward count at this entry's last unpack (-1: never unpacked)."""

    @property
    def resident(self) -> bool:
        return self.state in RESIDENT

    @property
    def released(self) -> bool:
        return self.state == "released"

    def move(self, new: State) -> int:
        """Change state to ``new``; returns the change in resident bytes."""
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"swapseg engine: saved storage {self.id} "
                                    f"({self.scope or '<root>'}) cannot go {old} -> {new}")
        self.state = new
        return self.nbytes * ((new in RESIDENT) - (old in RESIDENT))
