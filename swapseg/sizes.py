"""The one byte-size grammar, for the command line and the library alike.

    SIZE := NUMBER [UNIT]              e.g. 16GiB, 16G, 12.5GB, 1e9, 17179869184

Units: B; K, M, G, T and KB, MB, GB, TB (powers of 1000); KiB, MiB, GiB, TiB (powers
of 1024). Case-insensitive. A plain number is bytes. It lives below every layer that reads
sizes (the CLI's flags, the integrations' environment variables).
"""

from __future__ import annotations

import math
import re

from swapseg.errors import InputError

__all__ = ["parse_bytes", "SIZE_HELP"]

SIZE_HELP = "bytes with an optional unit: 16GiB, 16G, 12.5GB, 1e9"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_bytes(text: str | int, what: str | None = None) -> int:
    """``'16GiB'`` -> 17179869184; ``'16G'`` / ``'16GB'`` -> 16 * 10**9; ``'1e9'``.

    ``what`` (a flag or variable name) starts the error message when given.
    """
    lead = f"{what}: " if what else ""
    m = _SIZE.fullmatch(str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise InputError(f"{lead}not a memory size: {text!r} (expected {SIZE_HELP})")
    n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n < 1:
        raise InputError(f"{lead}memory size {text!r} must be at least one byte")
    return int(n)
