"""Reading plain-data records (policies, plans, configs) back from dicts and JSON.

Each record dataclass keeps its own ``from_dict``; these two checks are what they share,
so that every bad file or field gets the same one-line :class:`InputError`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from swapseg.errors import InputError

__all__ = ["check_fields", "json_object"]


def check_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Refuse keys of ``d`` that are not fields of the dataclass ``cls`` (a typo in a
    hand-written policy would otherwise be ignored or fail deep inside)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {what} field(s): {', '.join(unknown)}")


def json_object(text: str, what: str) -> dict[str, Any]:
    """Parse ``text`` as one JSON object; ``what`` names it in the error."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise InputError(f"{what} JSON must be an object")
    return d
