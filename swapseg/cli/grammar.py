"""The command line's one argument grammar: shapes, byte sizes, precisions.

Shapes (every subcommand)::

    SHAPE := N | DxHxW | CxDxHxW      e.g. 64, 96x128x128, 4x192x192x192

``N`` is a cube of side N; a fourth leading number is the channel count. Batch size is
never part of a shape: it is the ``--batch`` flag. Spatial-only flags (``train
--shape``) refuse a channel count.

Loss targets (``plan --target``; the planner builds the target as zeros)::

    TARGET := like-output[:DTYPE] | labels[:DTYPE] | BxCxDxHxW:DTYPE | BxDxHxW:DTYPE
    DTYPE  := float32 | float16 | bfloat16 | int64 | int32 | uint8 | bool

``like-output`` is shaped like the model's output (default float32: a one-hot target);
``labels`` is ``B x 1 x D x H x W`` class indices (default int64: MONAI's
``to_onehot_y=True``); a shape is the whole target, batch included (``BxDxHxW:int64``
for ``torch.nn.CrossEntropyLoss``), its batch and spatial sides those of the input.

Byte sizes (every ``--memory-budget``, ``--cap``; the grammar is ``swapseg.offload.sizes``)::

    SIZE := NUMBER UNIT                e.g. 16GiB, 16G, 12.5GB, 1e9B, 17179869184B

Units: B; K, M, G, T and KB, MB, GB, TB (powers of 1000); KiB, MiB, GiB, TiB (powers
of 1024). Case-insensitive. A bare number is an error that suggests a unit.

Each grammar comes twice: ``parse_*`` raises :class:`InputError` (library and config
use), the argparse ``type=`` callables raise ``argparse.ArgumentTypeError``.

Errors (every subcommand parser is a :class:`Parser`)::

    bad value      swapseg train: error: argument --shape: shape 'abc': expected ...
    usage error    the subcommand's usage, then  swapseg train: error: unrecognized ...
    bad input      swapseg: error: <file or value>: <what is wrong>   (an InputError)

A bad value (a type, a choice) is one line naming the flag; an unknown option, a missing
required argument or a missing action prints the SUBCOMMAND's usage first. All exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch

from swapseg.errors import InputError
from swapseg.offload.sizes import SIZE_HELP, parse_bytes
from swapseg.planner.loss import Target, like_output
from swapseg.training.precision import PRECISIONS, autocast_dtype, check_precision

__all__ = ["Parser", "add_command", "add_action", "Volume", "integer", "number", "output_path",
           "output_dir",
           "flags_for_fields", "fields_as_flags", "parse_shape", "parse_bytes", "check_precision",
           "autocast_dtype", "byte_size", "spatial_shape", "volume_shape", "precision",
           "PRECISIONS", "TargetSpec", "parse_target", "loss_target", "TARGET_DTYPES",
           "SHAPE_HELP", "SIZE_HELP", "TARGET_HELP"]

SHAPE_HELP = "N, DxHxW or CxDxHxW (e.g. 64, 4x192x192x192)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors follow the one format above.

    Subparsers inherit the class, so each subcommand reports its own unknown options
    (argparse would hand them up to the top-level parser, which prints its own usage).
    """

    def __init__(self, *args: Any, top: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._top = top

    def error(self, message: str) -> NoReturn:
        if not message.startswith("argument "):  # not a bad value: how to call it helps
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = super().parse_known_args(args, namespace)
        if extras and not self._top:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        # a type= callable of the library may raise InputError: the same one line
        try:
            return super()._get_value(action, arg_string)
        except InputError as exc:
            raise argparse.ArgumentError(action, str(exc)) from None


def flags_for_fields(message: str, flags: Mapping[str, str]) -> str:
    """``'max_epochs must be >= 1'`` -> ``'--epochs must be >= 1'``: config checks name
    fields, a command line user knows flags."""
    head, sep, rest = message.partition(" ")
    return f"{flags[head]}{sep}{rest}" if head in flags else message


@contextlib.contextmanager
def fields_as_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """Re-raise an :class:`InputError` that starts with a config field as its flag."""
    try:
        yield
    except InputError as exc:
        raise InputError(flags_for_fields(str(exc), flags)) from None


class Volume(NamedTuple):
    channels: int | None      # None when the shape gave only spatial sides
    spatial: tuple[int, ...]  # (D, H, W)

    def input_shape(self, batch: int = 1, channels: int | None = None) -> tuple[int, ...]:
        """``(B, C, D, H, W)``; ``channels`` fills in a shape that gave none."""
        c = self.channels if self.channels is not None else channels
        if c is None:
            raise InputError(f"shape {'x'.join(map(str, self.spatial))} needs a channel "
                             "count: give CxDxHxW")
        return (batch, c, *self.spatial)


def parse_shape(text: str, channels: bool = True) -> Volume:
    """``'64'`` -> (None, (64, 64, 64)); ``'4x64x80x96'`` -> (4, (64, 80, 96))."""
    form = SHAPE_HELP if channels else "N or DxHxW (e.g. 64, 96x128x128)"
    try:
        dims = [int(s) for s in str(text).strip().lower().split("x")]
    except ValueError:
        raise InputError(f"shape {text!r}: expected {form}") from None
    if len(dims) not in ((1, 3, 4) if channels else (1, 3)) or min(dims) < 1:
        raise InputError(f"shape {text!r}: expected {form} with positive sides"
                         + ("; the batch size is --batch" if len(dims) == 5 else ""))
    if len(dims) == 1:
        return Volume(None, (dims[0],) * 3)
    if len(dims) == 3:
        return Volume(None, tuple(dims))
    return Volume(dims[0], tuple(dims[1:]))


TARGET_HELP = ("like-output, labels, or a whole shape and dtype such as "
               "1x1x64x64x64:int64 (like-output and labels take :DTYPE too)")

#: ``--target`` dtypes by name.
TARGET_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
_TARGET_FORMS = {"like-output": torch.float32, "labels": torch.int64}


class TargetSpec(NamedTuple):
    """A parsed ``--target``: ``form`` is ``like-output``, ``labels`` or ``shape``."""

    text: str
    form: str
    dtype: torch.dtype
    shape: tuple[int, ...] = ()

    def describe(self, input_shape: tuple[int, ...]) -> Target:
        """The planner's target description for one input ``(B, C, *spatial)``; a shape
        whose batch or spatial sides are not the input's is an InputError."""
        batch, spatial = input_shape[0], tuple(input_shape[2:])
        if self.form == "like-output":
            return like_output(self.dtype)
        if self.form == "labels":
            return (batch, 1, *spatial), self.dtype
        n = len(spatial)
        if len(self.shape) not in (n + 1, n + 2):
            raise InputError(f"--target {self.text}: {len(self.shape)} sides; expected "
                             f"{n + 2} (B, C and {n} spatial) or {n + 1} (no channels)")
        if self.shape[0] != batch or self.shape[-n:] != spatial:
            want = "x".join(map(str, (batch, *spatial)))
            raise InputError(f"--target {self.text}: batch and spatial sides must be the "
                             f"input's ({want} from --batch and --shape)")
        return self.shape, self.dtype


def parse_target(text: str) -> TargetSpec:
    """``'labels'``, ``'like-output:float16'``, ``'1x1x64x64x64:int64'`` -> TargetSpec."""
    raw = str(text).strip()
    head, sep, dtype_name = raw.lower().partition(":")
    if head in _TARGET_FORMS and not sep:
        return TargetSpec(raw, head, _TARGET_FORMS[head])
    if not sep:
        raise InputError(f"target {text!r}: expected {TARGET_HELP}")
    if dtype_name not in TARGET_DTYPES:
        raise InputError(f"target {text!r}: unknown dtype {dtype_name!r} (use "
                         f"{', '.join(TARGET_DTYPES)})")
    dtype = TARGET_DTYPES[dtype_name]
    if head in _TARGET_FORMS:
        return TargetSpec(raw, head, dtype)
    try:
        shape = tuple(int(s) for s in head.split("x"))
    except ValueError:
        raise InputError(f"target {text!r}: expected {TARGET_HELP}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise InputError(f"target {text!r}: a shape needs the batch and at least one more "
                         "positive side")
    return TargetSpec(raw, "shape", dtype, shape)


def _argtype(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return fn(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def integer(minimum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer, at least ``minimum``."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return convert


def number(low: float, high: float, high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=``: a number in ``[low, high]`` (``[low, high)`` if high_open)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value < high if high_open else low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {text}")
        return value
    return convert


def output_path(text: str) -> str:
    """An argparse ``type=`` for a file or folder to be written: nothing in the way.

    Checked before any work, so a typo costs nothing (a folder under a file would fail
    only at the first write, after the work)."""
    path = Path(text)
    for above in (path, *path.parents):
        if above.exists():
            if above != path and not above.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {above} is a file, not a folder")
            break
    return text


def output_dir(text: str) -> str:
    """An argparse ``type=`` for a folder to be written: not a file, nothing in the way."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return output_path(text)


#: argparse ``type=`` callables.
byte_size = _argtype(parse_bytes, "size")
volume_shape = _argtype(parse_shape, "shape")
spatial_shape = _argtype(lambda t: parse_shape(t, channels=False).spatial, "shape")
precision = _argtype(check_precision, "precision")
loss_target = _argtype(parse_target, "target")


def add_command(subparsers: Any, name: str, help: str, description: str | None = None,
                epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser, its examples printed as written under ``--help``."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_action(parent: argparse.ArgumentParser, dest: str) -> Any:
    """The sub-actions of a command (``data check``, ``nnunet train``): one required."""
    return parent.add_subparsers(dest=dest, required=True, metavar="ACTION")
