"""SIGTERM and Ctrl-C: stop training after the current step, with a checkpoint written.

``swapseg train`` runs inside :func:`stop_signals`. The first SIGINT or SIGTERM only sets a
flag; the training loop calls :func:`after_step` after every optimizer step and
:func:`after_epoch` after every epoch's checkpoint, and those raise :class:`StopRequested`
once the flag is set. The loop then writes a checkpoint (mid-epoch if need be) and raises
:class:`Interrupted`, which the CLI turns into one line with the ``--resume`` command and
exit status ``128 + signal``: 130 for SIGINT, 143 for SIGTERM (the shell's convention).

Before the first step has finished there is nothing to save, so a signal stops at once
(still as :class:`Interrupted`). A second signal also stops at once: the last checkpoint
stays as it was, since every write is atomic. Under torchrun (``WORLD_SIZE > 1``) the
handlers are not installed: ranks would stop at different steps and wait on each other
forever. A run stopped there resumes from its last epoch checkpoint.

Test hooks (fault injection), read from the environment at every step:
``SWAPSEG_FAULT_KILL_AFTER_STEP=N`` SIGKILLs the process after global step N (1-based);
``SWAPSEG_FAULT_SIGNAL_AFTER_STEP=N:TERM`` (or ``N:INT``) sends it that signal there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["stop_signals", "after_step", "after_epoch", "worker_signals",
           "raise_if_worker_lost", "StopRequested", "Interrupted", "FAULT_KILL_AFTER_STEP",
           "FAULT_SIGNAL_AFTER_STEP"]

FAULT_KILL_AFTER_STEP = "SWAPSEG_FAULT_KILL_AFTER_STEP"
FAULT_SIGNAL_AFTER_STEP = "SWAPSEG_FAULT_SIGNAL_AFTER_STEP"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):  # a request, not an error
    """Raised by the loop's hooks once a stop signal came; carries the epoch's progress."""

    def __init__(self, signum: int, progress: Any = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.progress = progress


class Interrupted(Exception):  # the run was interrupted, by request
    """Training stopped on a signal; ``checkpoint`` is the file a resumed run starts from."""

    def __init__(self, signum: int, checkpoint: Path | None = None, where: str = "") -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        self.where = where
        super().__init__(self.message())

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            return f"interrupted by {name} {self.where}".strip()
        return f"interrupted by {name} {self.where}; checkpoint written to {self.checkpoint}"


_state: dict[str, Any] = {"installed": False, "armed": False, "requested": None}


@contextlib.contextmanager
def stop_signals(enabled: bool = True) -> Iterator[None]:
    """Within: SIGINT and SIGTERM ask the training loop to stop after its current step."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _state.update(installed=True, armed=False, requested=None)
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(installed=False, armed=False, requested=None)


def _handler(signum: int, frame: Any) -> None:
    if not _state["armed"] or _state["requested"] is not None:
        raise Interrupted(signum, where="before a step could be saved" if not _state["armed"]
                          else "again: stopped at once")
    _state["requested"] = signum
    # os.write, not print: a handler may run in the middle of another write to stderr
    os.write(2, f"swapseg: {signal.Signals(signum).name}: stopping after this step and "
                "writing a checkpoint (Ctrl-C again to stop at once)\n".encode())


def worker_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``. Ctrl-C reaches the whole process group, and a worker
    that died of it would fail the step the main process is finishing: workers ignore
    SIGINT. SIGTERM gets its default back (a forked worker inherits the main process's
    handler), so that a worker still dies of ``terminate()`` when the loader shuts it down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def raise_if_worker_lost(exc: RuntimeError, checkpoint: Path) -> None:
    """A DataLoader worker's death while a stop is requested means a SIGTERM sent to the
    whole process group killed it, maybe mid-step: raise :class:`Interrupted`. Nothing of
    the unfinished epoch is saved (the step may be half applied); the last epoch
    checkpoint stands. Any other error: return (the caller re-raises it)."""
    if _state["requested"] is not None and "DataLoader worker" in str(exc):
        raise Interrupted(_state["requested"], checkpoint,
                          "(a DataLoader worker died of it: the last epoch checkpoint stands)"
                          ) from exc


def after_step(global_step: int, progress: Any) -> None:
    """Called after each optimizer step: a stop request takes effect here."""
    _state["armed"] = _state["installed"]
    _fault_hooks(global_step)
    if _state["requested"] is not None:
        raise StopRequested(_state["requested"], progress)


def after_epoch() -> None:
    """Called after each epoch's checkpoint: a stop request takes effect here."""
    if _state["requested"] is not None:
        raise StopRequested(_state["requested"])


def _fault_hooks(global_step: int) -> None:
    if os.environ.get(FAULT_KILL_AFTER_STEP) == str(global_step):
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, name = os.environ.get(FAULT_SIGNAL_AFTER_STEP, "").partition(":")
    if at == str(global_step):
        signal.raise_signal(getattr(signal, f"SIG{name or 'TERM'}"))
