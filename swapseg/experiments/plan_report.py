"""`swapseg plan` as a library call: build the model, trace, search, write the outputs.

The planner knows no model; this is where the domain adds what it knows: the
registry's models, the soft-Dice training loss for segmentation networks, and, for the
Isensee U-Net, the paper's configurations 1-4 as extra candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.experiments.methods_bench import dice_loss
from swapseg.experiments.paper_configs import paper_candidates
from swapseg.io import write_json, write_text
from swapseg.models.registry import DEFAULT_MODEL, MODELS, build_model
from swapseg.offload.policy import MemoryPlan
from swapseg.planner import SearchResult, calibration_shape, get_profile, search, trace_step
from swapseg.planner.timeline_plot import plot_timelines

__all__ = ["run_plan", "format_table", "plan_model"]


def plan_model(spec: str, kwargs: dict[str, Any], channels: int) -> nn.Module:
    """The model to plan; a registered name gets ``in_channels`` from the shape."""
    kw = dict(kwargs)
    if spec in MODELS:
        kw.setdefault("in_channels", channels)
    return build_model(spec, kw)


def format_table(res: SearchResult) -> str:
    d = res.as_dict()
    head = (f"{'candidate':<49} {'swapped':>7} {'swap GiB':>8} {'recomp':>6} "
            f"{'peak GiB':>8} {'step s':>8} {'overhead':>8}  fits")
    lines = [head, "-" * len(head)]
    for c in d["candidates"]:
        mark = "*" if d["chosen"] and c["name"] == d["chosen"]["name"] else " "
        lines.append(
            f"{c['name'][:47]:<47} {mark} {c['swapped_tensors']:>7} "
            f"{c['swapped_bytes'] / 2**30:>8.2f} {c['recomputed_tensors']:>6} "
            f"{c['peak_bytes'] / 2**30:>8.2f} {c['step_s']:>8.3f} "
            f"{c['overhead']:>+8.1%}  {'yes' if c['fits'] else 'no'}")
    return "\n".join(lines)


def _trace(model: nn.Module, shape: tuple[int, ...], spec: str, loss: Any,
           dtype: torch.dtype | None) -> Any:
    divisor = getattr(model, "divisor", None)
    if isinstance(divisor, int) and any(s % divisor for s in shape[2:]):
        raise InputError(f"shape {'x'.join(map(str, shape[1:]))}: spatial sides of {spec} "
                         f"must be multiples of {divisor}")
    try:
        return trace_step(model, shape, loss, name=spec, autocast_dtype=dtype)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"model {spec} cannot run at input {'x'.join(map(str, shape))}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                         ) from None


def run_plan(spec: str, kwargs: dict[str, Any], shape: tuple[int, ...], profile: str,
             budget: int, out: str | Path | None, margin: float = 0.10,
             autocast_dtype: torch.dtype | None = None, precision: str = "32",
             tier: str = "host") -> tuple[SearchResult, dict[str, Any]]:
    """Trace ``spec`` at ``shape`` (B, C, D, H, W), search, and (when ``out`` is given)
    write plan.json (every candidate), memory_plan.json (the chosen MemoryPlan) and
    timeline.png. Raises InputError before anything is written."""
    model = plan_model(spec, kwargs, shape[1])
    loss = dice_loss if spec in MODELS else None  # registered models are segmentation nets
    dev = get_profile(profile, model, tier, loss_fn=loss, autocast_dtype=autocast_dtype,
                      calibrate_shape=calibration_shape(shape) if profile == "local" else None)
    trace = _trace(model, shape, spec, loss, autocast_dtype)
    extra = paper_candidates(trace) if spec == DEFAULT_MODEL else []
    res = search(trace, dev, budget, margin, extra=extra)  # raises before anything is written
    chosen = res.chosen
    assert chosen is not None and chosen.result is not None
    d = res.as_dict()
    d["command"] = {"model": spec, "model_kwargs": kwargs, "shape": list(shape),
                    "profile": profile, "memory_budget_bytes": budget, "precision": precision}
    plan = MemoryPlan(chosen.swap, chosen.recompute, chosen.name)
    d["memory_plan"] = plan.to_dict()
    if out is not None:
        out = Path(out)
        byname = {c.name: c for c in res.candidates}
        panels = [(f"{n}: peak {byname[n].result.peak_bytes / 2**30:.2f} GiB, step "
                   f"{byname[n].result.step_s:.3f} s", byname[n].result.timeline)
                  for n in ("paper-config-1", "paper-config-3", "paper-config-4")
                  if n in byname]
        panels.insert(0, (f"chosen: {chosen.name}: peak "
                          f"{chosen.result.peak_bytes / 2**30:.2f} GiB, step "
                          f"{chosen.result.step_s:.3f} s", chosen.result.timeline))
        plot_timelines(panels, out / "timeline.png", budget_bytes=budget)
        write_text(out / "memory_plan.json", plan.to_json() + "\n")
        write_json(out / "plan.json", d)
    return res, d
