"""The two matplotlib steps every figure shares: a headless backend, an atomic PNG write."""

from __future__ import annotations

import os
from typing import Any

from swapseg.io import atomic_path

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
