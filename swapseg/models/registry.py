"""Models by name or by import spec, so every command can build any network.

A spec is either a registered name (``isensee``, the default) or
``"module.path:callable"``, e.g. ``monai.networks.nets:SegResNet``. Keyword arguments
come as a JSON object (``--model-kwargs '{"spatial_dims": 3}'``). Anything wrong with
a spec (unknown name, module that does not import, missing attribute, bad kwargs,
a callable that does not return an ``nn.Module``) is one :class:`InputError` naming it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from swapseg.errors import InputError
from swapseg.offload.record import json_object

__all__ = ["MODELS", "DEFAULT_MODEL", "build_model", "parse_kwargs", "resolve"]

DEFAULT_MODEL = "isensee"


def _isensee(**kwargs: Any) -> nn.Module:
    from swapseg.models.unet3d import Isensee3DUNet
    return Isensee3DUNet(**kwargs)


#: Registered names -> factory(**kwargs) -> nn.Module.
MODELS: dict[str, Callable[..., nn.Module]] = {"isensee": _isensee}


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``'{"a": 1}'`` -> ``{"a": 1}``; None or empty -> ``{}``."""
    return json_object(text, f"model kwargs {text!r}") if text else {}


def resolve(spec: str) -> Callable[..., nn.Module]:
    """The factory a spec names (a registered name or ``module.path:callable``)."""
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise InputError(f"unknown model {spec!r}: use one of {', '.join(MODELS)} or "
                         "'module.path:callable' (e.g. monai.networks.nets:SegResNet)")
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InputError(f"model {spec!r}: cannot import {mod_name!r} ({exc})") from None
    obj: Any = mod
    for part in attr.split("."):
        if not part or not hasattr(obj, part):
            raise InputError(f"model {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"model {spec!r}: {attr!r} is not callable")
    return obj


def build_model(spec: str = DEFAULT_MODEL, kwargs: dict[str, Any] | str | None = None
                ) -> nn.Module:
    """Build the model ``spec`` names with ``kwargs`` (a dict or a JSON object string)."""
    kw = parse_kwargs(kwargs) if isinstance(kwargs, str) or kwargs is None else dict(kwargs)
    factory = resolve(spec)
    try:
        model = factory(**kw)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InputError(f"model {spec!r} with kwargs {json.dumps(kw)}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model
