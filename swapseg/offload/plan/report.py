"""`swapseg plan` as a library call: parse the user's figures, search, write the outputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from swapseg.errors import InputError
from swapseg.io import write_json
from swapseg.offload.plan.devices import get_profile
from swapseg.offload.plan.search import SearchResult, search
from swapseg.offload.plan.timeline_plot import plot_timelines
from swapseg.offload.plan.trace import trace_step

__all__ = ["parse_bytes", "parse_shape", "build_model", "run_plan", "format_table", "MODELS",
           "calibration_shape"]

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

MODELS = ("isensee",)


def parse_bytes(text: str) -> int:
    """'16GiB' -> 17179869184; '12.5GB' -> 12500000000; '1024' -> 1024."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"memory size {text!r} is not a number with an optional unit "
                         "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise InputError(f"memory size must be positive, got {text!r}")
    return n


def parse_shape(text: str, batch: int = 1) -> tuple[int, ...]:
    """'4x192x192x192' (C x D x H x W, batch added) or '1x4x192x192x192' -> 5-tuple."""
    try:
        dims = tuple(int(s) for s in str(text).lower().split("x"))
    except ValueError:
        raise InputError(f"shape {text!r} must be integers joined by 'x', "
                         "e.g. 4x192x192x192") from None
    if len(dims) == 4:
        dims = (batch, *dims)
    if len(dims) != 5 or min(dims) < 1:
        raise InputError(f"shape {text!r} must be CxDxHxW or BxCxDxHxW with positive sides")
    return dims


def build_model(name: str, in_channels: int, base_filters: int = 16, depth: int = 5,
                out_channels: int = 3) -> nn.Module:
    if name != "isensee":
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    from swapseg.models.unet3d import Isensee3DUNet
    if base_filters < 1 or in_channels < 1:
        raise InputError(f"base filters and input channels must be >= 1, got "
                         f"{base_filters} and {in_channels}")
    try:
        return Isensee3DUNet(in_channels=in_channels, out_channels=out_channels,
                             base_filters=base_filters, depth=depth)
    except ValueError as exc:
        raise InputError(f"model {name!r}: {exc}") from None


def calibration_shape(dims: tuple[int, ...], divisor: int, cap: int = 64) -> tuple[int, ...]:
    """A cube no larger than ``cap`` (and the input) for the local profile's real step."""
    side = max(divisor * 2, min(cap, *dims[2:]) // divisor * divisor)
    return (dims[0], dims[1], side, side, side)


def format_table(res: SearchResult) -> str:
    d = res.as_dict()
    head = (f"{'candidate':<49} {'swapped':>7} {'swap GiB':>8} {'recomp':>6} "
            f"{'peak GiB':>8} {'step s':>8} {'overhead':>8}  fits")
    lines = [head, "-" * len(head)]
    for c in d["candidates"]:
        mark = "*" if d["chosen"] and c["name"] == d["chosen"]["name"] else " "
        lines.append(
            f"{c['name']:<47} {mark} {c['swapped_tensors']:>7} "
            f"{c['swapped_bytes'] / 2**30:>8.2f} {c['recomputed_tensors']:>6} "
            f"{c['peak_bytes'] / 2**30:>8.2f} {c['step_s']:>8.3f} "
            f"{c['overhead']:>+8.1%}  {'yes' if c['fits'] else 'no'}")
    return "\n".join(lines)


def run_plan(model_name: str, shape: str, device: str, memory: str, out: str | Path | None,
             batch: int = 1, margin: float = 0.10, base_filters: int = 16, depth: int = 5,
             tier: str = "host") -> tuple[SearchResult, dict[str, Any]]:
    """Trace, search, and (when ``out`` is given) write plan.json and timeline.png."""
    dims = parse_shape(shape, batch)
    budget = parse_bytes(memory)
    model = build_model(model_name, dims[1], base_filters, depth)
    bad = [s for s in dims[2:] if s % model.divisor]
    if bad:
        raise InputError(f"shape {shape!r}: spatial sides must be multiples of "
                         f"{model.divisor} for depth {depth}")
    dev = get_profile(device, model, tier, calibrate_shape=calibration_shape(dims, model.divisor))
    trace = trace_step(model, dims, name=model_name)
    res = search(trace, dev, budget, margin)  # raises before anything is written
    d = res.as_dict()
    d["command"] = {"model": model_name, "shape": list(dims), "device": device,
                    "memory": memory, "base_filters": base_filters, "depth": depth}
    if out is not None:
        out = Path(out)
        byname = {c.name: c for c in res.candidates}
        panels = [(f"{n}: peak {byname[n].result.peak_bytes / 2**30:.2f} GiB, step "
                   f"{byname[n].result.step_s:.3f} s", byname[n].result.timeline)
                  for n in ("paper-config-1", "paper-config-3", "paper-config-4")
                  if n in byname]
        chosen = res.chosen
        assert chosen is not None and chosen.result is not None
        panels.insert(0, (f"chosen: {chosen.name}: peak "
                          f"{chosen.result.peak_bytes / 2**30:.2f} GiB, step "
                          f"{chosen.result.step_s:.3f} s", chosen.result.timeline))
        plot_timelines(panels, out / "timeline.png", budget_bytes=budget)
        write_json(out / "plan.json", d)
    return res, d
