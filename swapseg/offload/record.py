"""Plain-data records (policies, plans, profiles): one base for dict and JSON round trips.

Every record is a frozen dataclass deriving from :class:`Record`. Reading one back refuses
unknown keys and bad JSON with the same one-line :class:`InputError`, so a typo in a
hand-written policy fails at once instead of being ignored or failing deep inside.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

from swapseg.errors import InputError

__all__ = ["Record", "check_fields", "json_object"]

R = TypeVar("R", bound="Record")


def check_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Refuse keys of ``d`` that are not fields of the dataclass ``cls``."""
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


def _plain(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Record:
    """Base of the frozen dataclasses that travel as JSON."""

    #: How error messages name the record's JSON (``"policy"``, ``"plan"``).
    what: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        if not isinstance(d, dict):
            raise InputError(f"{cls.what} must be a JSON object, got {type(d).__name__}")
        check_fields(cls, d, cls.__name__)
        return cls(**cls._decode(dict(d)))

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        return cls.from_dict(json_object(text, cls.what))

    @classmethod
    def _decode(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Turn nested plain values back into field values (records override this)."""
        return d

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
