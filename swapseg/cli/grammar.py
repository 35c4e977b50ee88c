"""The command line's one argument grammar: shapes, byte sizes, precisions.

Shapes (every subcommand)::

    SHAPE := N | DxHxW | CxDxHxW      e.g. 64, 96x128x128, 4x192x192x192

``N`` is a cube of side N; a fourth leading number is the channel count. Batch size is
never part of a shape: it is the ``--batch`` flag. Spatial-only flags (``train
--shape``) refuse a channel count.

Byte sizes (every ``--memory-budget``, ``--cap``; the grammar is ``swapseg.sizes``)::

    SIZE := NUMBER [UNIT]              e.g. 16GiB, 16G, 12.5GB, 1e9, 17179869184

Units: B; K, M, G, T and KB, MB, GB, TB (powers of 1000); KiB, MiB, GiB, TiB (powers
of 1024). Case-insensitive. A plain number is bytes.

Each grammar comes twice: ``parse_*`` raises :class:`InputError` (library and config
use), the argparse ``type=`` callables raise ``argparse.ArgumentTypeError`` so that
argparse prints the subcommand's usage and one line, exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

from swapseg.errors import InputError
from swapseg.sizes import SIZE_HELP, parse_bytes
from swapseg.training.precision import PRECISIONS, autocast_dtype, check_precision

__all__ = ["add_command", "Volume", "parse_shape", "parse_bytes", "check_precision",
           "autocast_dtype", "byte_size", "spatial_shape", "volume_shape", "precision",
           "PRECISIONS",
           "SHAPE_HELP", "SIZE_HELP"]

SHAPE_HELP = "N, DxHxW or CxDxHxW (e.g. 64, 4x192x192x192)"



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


def _argtype(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return fn(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


#: argparse ``type=`` callables.
byte_size = _argtype(parse_bytes, "size")
volume_shape = _argtype(parse_shape, "shape")
spatial_shape = _argtype(lambda t: parse_shape(t, channels=False).spatial, "shape")
precision = _argtype(check_precision, "precision")


def add_command(subparsers: Any, name: str, help: str, description: str,
                epilog: str) -> argparse.ArgumentParser:
    """A subcommand's parser, its examples printed as written under ``--help``."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
