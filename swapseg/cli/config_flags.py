"""Command-line flags made from ``TrainConfig``'s fields, for ``train``, ``experiment`` and
``demo`` alike.

A field that the command line sets carries its flag in its metadata
(``swapseg.training.config.option``): the flag's name, whether it applies on
``--resume``, a metavar, bounds, and whether it names a folder to write. The flag's type
follows the field's annotation (``Literal`` -> choices, ``bool`` -> a switch, a shape ->
the shape grammar), its help is the first sentence of the field's docstring and its
default is the field's default, stated once in the dataclass. So a new field needs no
edit here, and no command restates a default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable
from typing import Any

from swapseg.cli import grammar as g
from swapseg.training.config import TrainConfig

__all__ = ["field_docs", "flags", "resume_fields", "add_config_args", "config_changes"]


@functools.cache
def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), by name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag")}


def flags() -> dict[str, str]:
    """Every config field the command line sets, by field: its flag (config checks name
    fields; the CLI's errors name flags)."""
    return {name: f.metadata["flag"] for name, f in _fields().items()}


def resume_fields() -> dict[str, str]:
    """The fields whose flags apply with ``--resume``, by field: their flags."""
    return {name: f.metadata["flag"] for name, f in _fields().items() if f.metadata["resume"]}


def _help(name: str, default: Any) -> str:
    doc = " ".join(field_docs().get(name, "").split()).replace("``", "")
    first = doc.split(". ")[0].rstrip(".")
    if default is True:  # the flag turns the field off
        return f"no {first[0].lower()}{first[1:]}"
    shown = default not in (None, "") and not isinstance(default, bool)
    if isinstance(default, tuple):
        default = "x".join(map(str, default))
    return first + (f" (default {default})" if shown else "")


def _kind(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """The argparse keywords of a field's flag, from its annotation and metadata."""
    meta = field.metadata
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    low, high = meta.get("low"), meta.get("high")
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": typing.get_args(hint),
                "type": _one_of(field.name, typing.get_args(hint))}
    if typing.get_origin(hint) is tuple:
        return {"type": g.spatial_shape}
    if hint is bool:
        return {"action": "store_const", "const": not field.default}
    if meta.get("folder"):
        return {"type": g.output_dir}
    if hint is int:
        return {"type": g.integer(low) if low is not None else int}
    if hint is float and low is not None and high is not None:
        return {"type": g.number(low, high, high_open=meta.get("high_open", False))}
    return {"type": hint if hint in (float, str) else str}


def _one_of(name: str, values: tuple[str, ...]) -> Any:
    """An argparse ``type=`` that names the field and its values, as the config's check."""
    def convert(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"{name} must be one of {', '.join(values)}, "
                                             f"got {text!r}")
        return text
    convert.__name__ = name
    return convert


def add_config_args(parser: Any, names: Iterable[str]) -> None:
    """Add the flags of the config fields ``names`` (their dest is the field's name)."""
    fields, hints = _fields(), typing.get_type_hints(TrainConfig)
    for name in names:
        f = fields[name]
        kw = _kind(f, hints[name])
        if f.metadata.get("metavar") and "action" not in kw:
            kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(f.metadata["flag"], dest=name, default=None,
                            help=_help(name, f.default), **kw)


def config_changes(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The config fields among ``names`` that the command line set, by field."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
