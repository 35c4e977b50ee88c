"""The one byte-size grammar, for the command line and the library alike.

    SIZE := NUMBER UNIT                e.g. 16GiB, 16G, 12.5GB, 1e9B, 17179869184B

Units: B; K, M, G, T and KB, MB, GB, TB (powers of 1000); KiB, MiB, GiB, TiB (powers
of 1024). Case-insensitive. The unit is required in text: ``--memory-budget 16`` meant
16 GiB, not 16 bytes, so a bare number is an error that suggests ``16GiB`` (write ``16B``
for bytes). A Python ``int`` is bytes. It lives below every layer that reads sizes (the
CLI's flags, the integrations' environment variables).

``format_bytes`` is the one way sizes are shown in messages: binary units, so that a
small budget reads ``512.00 MiB``, not ``0.50 GiB``.
"""

from __future__ import annotations

import math
import re

from swapseg.errors import InputError

__all__ = ["parse_bytes", "format_bytes", "SIZE_HELP"]

SIZE_HELP = "a number and a unit: 16GiB, 16G, 12.5GB, 1e9B"

_UNITS = {"b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_bytes(text: str | int, what: str | None = None) -> int:
    """``'16GiB'`` -> 17179869184; ``'16G'`` / ``'16GB'`` -> 16 * 10**9; ``'1e9B'``;
    an ``int`` is bytes. ``what`` (a flag or variable name) starts the error message.
    """
    lead = f"{what}: " if what else ""
    if isinstance(text, int) and not isinstance(text, bool):
        text = f"{text}B"
    m = _SIZE.fullmatch(str(text))
    unit = m.group(2).lower() if m else ""
    if m and not unit:
        raise InputError(f"{lead}memory size {text!r} has no unit: {_suggest(m.group(1))}")
    if not m or unit not in _UNITS:
        raise InputError(f"{lead}not a memory size: {text!r} (expected {SIZE_HELP})")
    n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n < 1:
        raise InputError(f"{lead}memory size {text!r} must be at least one byte")
    return int(n)


def _suggest(number: str) -> str:
    """A small bare number was meant in GiB; a large one was bytes, written out."""
    if float(number) < 2**10:
        return f"write {number}GiB for {number} GiB ({number}B for bytes)"
    shown = format_bytes(float(number)).replace(" ", "")
    return f"write {number}B for bytes, or a unit, e.g. {shown}"


def format_bytes(n: float) -> str:
    """``7.40 GiB``, ``512.00 MiB``, ``3.00 KiB``, ``12 B``: the largest binary unit that
    leaves at least 1, two decimals."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
