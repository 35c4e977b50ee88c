"""The ``swapseg`` console script.

Each subcommand lives in its own module under ``swapseg.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func``. ``func(args)``
returns an exit status. Bad input raises :class:`swapseg.errors.InputError`, which
becomes a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from swapseg import __version__
from swapseg.errors import InputError

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``swapseg --help`` lists them.
COMMANDS = ("demo", "synth", "data", "train", "predict", "evaluate", "plan", "bench",
            "experiment", "nnunet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapseg",
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
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"swapseg: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swapseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
