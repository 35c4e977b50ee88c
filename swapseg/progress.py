"""Progress of long work: a tqdm bar on a terminal, plain lines in a log, or nothing.

Every long command takes ``--no-progress``. Without it, a terminal (stderr is a TTY) gets a
tqdm bar; a pipe or log file gets one plain line per item (``predict: 2/12 Case_007``),
never carriage-return frames that pile up in a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, TypeVar

from tqdm.auto import tqdm

__all__ = ["Progress", "ProgressMode", "resolve_progress", "cli_progress", "track",
           "line_printer"]

T = TypeVar("T")

#: What a caller asks for: ``True``/``"auto"`` (a bar on a terminal, lines otherwise),
#: ``False``/``"off"``, or a mode forced.
Progress = bool | Literal["auto", "bar", "lines", "off"]
ProgressMode = Literal["bar", "lines", "off"]


def resolve_progress(progress: Progress) -> ProgressMode:
    """The mode actually used: ``auto`` (and ``True``) decides on whether stderr is a TTY."""
    if progress is False or progress == "off":
        return "off"
    if progress is True or progress == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    if progress not in ("bar", "lines"):
        raise ValueError(f"progress must be auto, bar, lines or off, got {progress!r}")
    return progress


def cli_progress(no_progress: bool) -> ProgressMode:
    """The mode of a command run with or without ``--no-progress``."""
    return "off" if no_progress else resolve_progress("auto")


def track(items: Sequence[T] | Iterable[T], desc: str, progress: Progress = "auto", *,
          unit: str = "case", label: Callable[[T], str] = str) -> Iterator[T]:
    """Iterate ``items`` showing progress; in ``lines`` mode one line per finished item."""
    mode = resolve_progress(progress)
    if mode == "bar":
        yield from tqdm(items, desc=desc, unit=unit)
        return
    items = list(items)
    for i, item in enumerate(items, start=1):
        t0 = time.perf_counter()
        yield item
        if mode == "lines":
            print(f"{desc}: {i}/{len(items)} {label(item)} ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr, flush=True)


def line_printer(desc: str, progress: Progress = "auto") -> Callable[[str], None] | None:
    """A callback printing ``desc: message`` lines to stderr, or None when progress is off.

    For work reported as free-text milestones rather than items of a known count (a bench's
    steps, a search's probes): those are lines on a terminal too, as no bar can measure them.
    """
    if resolve_progress(progress) == "off":
        return None
    return lambda message: print(f"{desc}: {message}", file=sys.stderr, flush=True)
