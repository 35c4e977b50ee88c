"""The ``swapseg`` console script.

Each subcommand lives in its own module under ``swapseg.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func``. ``func(args)``
returns an exit status. Bad input raises :class:`swapseg.errors.InputError`, which
becomes a one-line message and exit status 2; so does a run that stopped on a non-finite
loss, in every command that trains. Bad flags are argparse's, in the format of
:class:`swapseg.cli.grammar.Parser`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from swapseg import __version__
from swapseg.cli.grammar import Parser
from swapseg.errors import InputError
from swapseg.training.loop import NonFiniteLoss

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``swapseg --help`` lists them.
COMMANDS = ("demo", "synth", "data", "train", "predict", "evaluate", "plan", "bench",
            "experiment", "nnunet")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        top=True, prog="swapseg",
        description="Whole-volume 3D segmentation training with activation swapping.",
    )
    parser.add_argument("--version", action="version", version=f"swapseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        modname = f"swapseg.cli.{name}_cmd"
        if importlib.util.find_spec(modname) is None:
            continue  # not built yet; see the issue tracker
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        return _one_line(exc)
    except RuntimeError as exc:
        if not _run_stopped(exc):
            raise
        return _one_line(exc)
    except OSError as exc:  # a path of the user's that cannot be written or read
        if exc.filename is None:
            raise
        print(f"swapseg: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swapseg: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: Exception) -> int:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"swapseg: error: {msg}", file=sys.stderr)
    return 2


def _run_stopped(exc: RuntimeError) -> bool:
    """A training run that stopped on its own terms (a non-finite loss), not a bug."""
    return isinstance(exc, NonFiniteLoss)


if __name__ == "__main__":
    sys.exit(main())
