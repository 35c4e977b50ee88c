"""Checkpoints and RNG state: everything ``--resume`` needs, written atomically, loaded safely.

A checkpoint is a plain dict saved with ``torch.save``:

    epoch          epochs completed (the resumed run starts at this epoch index)
    global_step    optimizer steps taken
    model          state_dict of the bare model (never the DDP wrapper)
    model_kwargs   keyword arguments of ``Isensee3DUNet`` to rebuild it
    optimizer, scheduler, state (early stopping), rng, config, val
    partial        only in a checkpoint written mid-epoch (SIGTERM, Ctrl-C): the steps of
                   the unfinished epoch already taken and its running sums

Every value is a tensor, a number, a string, None or a list/tuple/dict of those, so the file
loads with ``torch.load(weights_only=True)``: unpickling can build nothing else, and a file
that names any other object (the way a pickle carries code) is refused before that object is
built. :func:`load_checkpoint` is the one loader; training, ``--resume`` and prediction all
go through it.

Checkpoints written before this format stored the numpy RNG state as an ``ndarray``. They
still load: :data:`OLD_FORMAT_GLOBALS`, the numpy array constructors only, are allowed
while loading, and nothing else is. ``python -m swapseg.training.checkpoint OLD.pt [NEW.pt]``
rewrites such a file in the current format.

Files are written through :func:`swapseg.io.atomic_path`, so a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import pickletools
import random
import re
import signal
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swapseg.errors import InputError
from swapseg.io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "convert_checkpoint", "restore", "resume_line",
           "remove_stale_temporaries", "rng_state", "set_rng_state", "EpochProgress",
           "OLD_FORMAT_GLOBALS", "FAULT_KILL_IN_SAVE"]

#: The only non-tensor globals a checkpoint may name: how numpy 1.x and 2.x pickle the
#: ``ndarray`` of the numpy RNG state that the previous format stored. An array
#: rebuilt from them holds numbers; an object array's items still pass the same check.
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
OLD_FORMAT_GLOBALS: list[Any] = [
    (_multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray, np.dtype, *([np.dtypes.UInt32DType] if hasattr(np, "dtypes") else []),
]

#: Test hook (fault injection): ``SWAPSEG_FAULT_KILL_IN_SAVE=last.pt:2`` makes the 2nd
#: :func:`save_checkpoint` to a file named ``last.pt`` in this process SIGKILL the process
#: halfway through writing its temporary file: a kill inside a checkpoint write, on cue.
FAULT_KILL_IN_SAVE = "SWAPSEG_FAULT_KILL_IN_SAVE"
_saves: dict[str, int] = {}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    name = Path(path).name
    _saves[name] = _saves.get(name, 0) + 1
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if os.environ.get(FAULT_KILL_IN_SAVE) == f"{name}:{_saves[name]}":
            _die_half_written(tmp)


def _die_half_written(tmp: Path) -> None:
    with open(tmp, "r+b") as fh:
        fh.truncate(tmp.stat().st_size // 2)
        os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    *, require: str | None = "model") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; InputError (one line) if it is missing,
    unreadable, carries anything but data, or (``require``) lacks that entry.

    ``require=None`` accepts any dict of data, such as a bare state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        # torch warns about pickle protocols; the verdict below is the one line to show
        with _allowing(OLD_FORMAT_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        refused = _refused_globals(path, exc)
        if refused:
            raise InputError(f"{path}: refused: it holds {refused}, not only tensors and plain "
                             "data (a pickle that may carry code); nothing in it was run"
                             ) from None
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a swapseg checkpoint (a {type(state).__name__}, "
                         "not a dict)")
    if require is not None and require not in state:
        raise InputError(f"{path}: not a swapseg checkpoint (no {require!r} entry)")
    if isinstance(state.get("rng"), dict):
        state["rng"] = _current_rng_format(state["rng"])
    return state


def _allowing(names: list[Any]) -> contextlib.AbstractContextManager[Any]:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return allow(names) if allow is not None else contextlib.nullcontext()


def restore(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> dict[str, Any]:
    """Load ``path`` into the model, optimizer, scheduler and RNGs; returns the checkpoint."""
    ck = load_checkpoint(path)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return ck


def resume_line(path: str | Path, ck: dict[str, Any]) -> str:
    partial = ck.get("partial")
    within = f", step {partial['steps']} of epoch {ck['epoch'] + 1}" if partial else ""
    return f"resuming from {path} after epoch {ck['epoch']}{within} (step {ck['global_step']})"


def remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Delete temporaries of atomic writes that a killed run left behind."""
    for name in ("best.pt", "last.pt"):
        for tmp in Path(ckpt_dir).glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def _refused_globals(path: Path, exc: Exception) -> str:
    """What the safe unpickler refused ('' when the file is simply not a checkpoint)."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return ""
    names = [n for n in _pickle_globals(path) if n not in _ALLOWED_NAMES] or \
        re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text)
    return ", ".join(dict.fromkeys(names))  # none named: a damaged file, not a refused one


_ALLOWED_NAMES = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                  "torch.FloatStorage", "torch.LongStorage", "torch.ByteStorage"}


def _pickle_globals(path: Path) -> list[str]:
    """The globals a pickle names, read from its opcodes (nothing is built or run)."""
    if zipfile.is_zipfile(path):
        try:
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - an odd archive: name nothing rather than fail
            return []
    names, strings = [], []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - a torn pickle: what was read so far is the answer
        pass
    return names


def convert_checkpoint(src: str | Path, dst: str | Path | None = None) -> Path:
    """Rewrite a checkpoint of the previous format (numpy RNG arrays) in the current one."""
    state = load_checkpoint(src, require=None)
    out = Path(dst) if dst is not None else Path(src)
    save_checkpoint(out, state)
    return out


def rng_state() -> dict[str, Any]:
    """The state of every RNG the training process draws from, as lists and tensors."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _current_rng_format(state: dict[str, Any]) -> dict[str, Any]:
    """An RNG record of the previous format (a tuple and an ndarray) in the current one."""
    state = dict(state)
    py, npy = state.get("python"), state.get("numpy")
    if isinstance(py, tuple):
        state["python"] = [py[0], list(py[1]), py[2]]
    if isinstance(npy, tuple):
        state["numpy"] = {"bit_generator": str(npy[0]), "key": [int(k) for k in npy[1]],
                          "pos": int(npy[2]), "has_gauss": int(npy[3]),
                          "cached_gaussian": float(npy[4])}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    state = _current_rng_format(state)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npy = state["numpy"]
    np.random.set_state((npy["bit_generator"], np.asarray(npy["key"], dtype=np.uint32),
                         npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class EpochProgress:
    """How far an epoch got: saved as ``partial`` when a run stops mid-epoch."""
    steps: int = 0
    """Training steps of this epoch already taken."""
    loss_sum: float = 0.0
    """Sum over those steps of loss x batch size."""
    samples: int = 0
    """Samples those steps saw."""
    wait_s: float = 0.0
    """Seconds spent waiting for data."""
    busy_s: float = 0.0
    """Seconds spent in steps."""
    elapsed_s: float = 0.0
    """Wall seconds of the epoch before it stopped (added to the epoch's ``epoch_s``)."""

    def add(self, loss: float, batch: int, wait_s: float, busy_s: float) -> None:
        self.steps += 1
        self.loss_sum += loss * batch
        self.samples += batch
        self.wait_s += wait_s
        self.busy_s += busy_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m swapseg.training.checkpoint OLD.pt [NEW.pt]", file=sys.stderr)
        return 2
    try:
        out = convert_checkpoint(*argv)
    except InputError as exc:
        print(f"swapseg: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
