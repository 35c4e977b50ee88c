"""Models by name or by import spec, so every command can build any network.

A spec is either a registered name (``isensee``, the default) or
``"module.path:callable"``, e.g. ``monai.networks.nets:SegResNet``, or a Python file and
a callable in it, ``./mynet.py:build`` or ``path/to/mynet.py:build`` (anything with a
``/`` or ending in ``.py`` is a path). A module that is not importable but lies in the
current folder (``mynet:build`` beside ``mynet.py``) is found there, without
``PYTHONPATH=.``: the ``swapseg`` command, unlike ``python -m``, does not put the current
folder on the import path. Keyword arguments
come as a JSON object (``--model-kwargs '{"spatial_dims": 3}'``). Anything wrong with
a spec (unknown name, module that does not import, missing attribute, bad kwargs,
a callable that does not return an ``nn.Module``) is one :class:`InputError` naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload.record import json_object

__all__ = ["MODELS", "DEFAULT_MODEL", "build", "build_model", "parse_kwargs", "resolve"]

DEFAULT_MODEL = "isensee"


def _isensee(**kwargs: Any) -> nn.Module:
    return Isensee3DUNet(**kwargs)


#: Registered names -> factory(**kwargs) -> nn.Module.
MODELS: dict[str, Callable[..., nn.Module]] = {"isensee": _isensee}


def parse_kwargs(text: str | None, what: str = "model") -> dict[str, Any]:
    """``'{"a": 1}'`` -> ``{"a": 1}``; None or empty -> ``{}``."""
    return json_object(text, f"{what} kwargs {text!r}") if text else {}


def resolve(spec: str, what: str = "model") -> Callable[..., Any]:
    """The factory a spec names (a registered name or ``module.path:callable``).

    ``what`` names the thing in errors (``model``, ``loss``); only models have
    registered names (``MODELS``)."""
    names: dict[str, Callable[..., Any]] = MODELS if what == "model" else {}
    if spec in names:
        return names[spec]
    if ":" not in spec:
        example = "monai.networks.nets:SegResNet" if what == "model" else \
            "monai.losses:DiceCELoss"
        known = f"one of {', '.join(names)} or " if names else ""
        raise InputError(f"unknown {what} {spec!r}: use {known}"
                         f"'module.path:callable' (e.g. {example}) or "
                         "'path/to/file.py:callable'")
    mod_name, _, attr = spec.rpartition(":")
    mod = _load_file(spec, mod_name, what) if _is_path(mod_name) \
        else _import(spec, mod_name, what)
    obj: Any = mod
    for part in attr.split("."):
        if not part or not hasattr(obj, part):
            raise InputError(f"{what} {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def _is_path(mod_name: str) -> bool:
    return "/" in mod_name or os.sep in mod_name or mod_name.endswith(".py")


def _import(spec: str, mod_name: str, what: str = "model") -> ModuleType:
    """``importlib.import_module``, falling back to the current folder."""
    def load() -> ModuleType:
        return importlib.import_module(mod_name)

    try:
        return _import_user_code(spec, mod_name, load, missing_ok=True, what=what)
    except ModuleNotFoundError as exc:
        top = mod_name.split(".")[0]
        here = Path.cwd()
        if exc.name != top or not ((here / f"{top}.py").is_file() or (here / top).is_dir()):
            raise InputError(f"{what} {spec!r}: cannot import {mod_name!r} ({exc})") from None
    # appended, not prepended: the current folder never shadows an installed module
    sys.path.append(str(here))
    importlib.invalidate_caches()
    return _import_user_code(spec, mod_name, load, what=what)


def _load_file(spec: str, path_text: str, what: str = "model") -> ModuleType:
    """The module of a ``.py`` file, under a private name (a file ``json.py`` must not
    replace the standard ``json`` for the rest of the process)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        kind = "a folder, not a file" if path.is_dir() else "no such file"
        raise InputError(f"{what} {spec!r}: {path_text}: {kind}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"_swapseg_model_{path.stem.replace('.', '_')}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise InputError(f"{what} {spec!r}: {path_text}: not a Python file")
    mod = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = mod  # as import does: dataclasses and pickling look it up

    def run() -> ModuleType:
        loader_spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod

    try:
        return _import_user_code(spec, path_text, run, what=what)
    except InputError:
        del sys.modules[name]
        raise


def _import_user_code(spec: str, source: str, load: Callable[[], ModuleType],
                      missing_ok: bool = False, what: str = "model") -> ModuleType:
    """Run the user's module: whatever it raises is one line naming it, not a traceback
    (``missing_ok``: a module not found is raised as it is, for a second place to look)."""
    try:
        return load()
    except Exception as exc:
        if missing_ok and isinstance(exc, ModuleNotFoundError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{what} {spec!r}: importing {source} raised "
                         f"{type(exc).__name__}{': ' + first if first else ''}") from None


def build(spec: str, kwargs: dict[str, Any], what: str = "model") -> Any:
    """``resolve(spec, what)(**kwargs)``; a call that refuses its kwargs is one line."""
    factory = resolve(spec, what)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InputError(f"{what} {spec!r} with kwargs {json.dumps(kwargs)}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None


def build_model(spec: str = DEFAULT_MODEL, kwargs: dict[str, Any] | str | None = None
                ) -> nn.Module:
    """Build the model ``spec`` names with ``kwargs`` (a dict or a JSON object string)."""
    kw = parse_kwargs(kwargs) if isinstance(kwargs, str) or kwargs is None else dict(kwargs)
    model = build(spec, kw)
    if not isinstance(model, nn.Module):
        raise InputError(f"model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model
