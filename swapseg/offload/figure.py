"""The two matplotlib steps every figure shares: a headless backend, an atomic PNG write.

Here in the mechanism package so that the engine's timeline plot needs nothing of
swapseg beyond itself; the planner and the domain's figures use the same two helpers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display on servers and in CI); imported
    on first use so that the library loads without matplotlib's start-up cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG), then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        pyplot().close(fig)
