"""`swapseg plan` as a library call: build the model, plan it, write the outputs.

The planner knows no model; this is where the domain adds what it knows: the
registry's models, the soft-Dice training loss for segmentation networks, and, for the
Isensee U-Net, the paper's configurations 1-4 as extra candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.experiments.methods_bench import dice_loss
from swapseg.experiments.paper_configs import paper_candidates
from swapseg.io import write_json, write_text
from swapseg.models.registry import DEFAULT_MODEL, MODELS, build_model
from swapseg.planner import PlanEvidence, SearchResult, plan_memory
from swapseg.planner.loss import Target
from swapseg.planner.timeline_plot import plot_pareto, plot_timelines

__all__ = ["run_plan", "format_table", "plan_model", "SEARCH_FILE"]

#: The ``plan`` command's search report (a run's plan record is ``plan.json``).
SEARCH_FILE = "plan_search.json"


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


def run_plan(spec: str, kwargs: dict[str, Any], shape: tuple[int, ...], profile: str,
             budget: int, out: str | Path | None, margin: float = 0.10,
             autocast_dtype: torch.dtype | None = None, precision: str = "32",
             tier: str = "auto", loss_fn: Callable[..., torch.Tensor] | None = None,
             target: Target | None = None, loss_record: dict[str, Any] | None = None
             ) -> tuple[PlanEvidence, dict[str, Any]]:
    """Plan ``spec`` at ``shape`` (B, C, D, H, W) and (when ``out`` is given) write
    plan_search.json (every evaluated plan and the Pareto front), memory_plan.json (the
    chosen MemoryPlan), timeline.png and pareto.png. Raises InputError before anything
    is written.

    ``loss_fn`` (and ``target``, a description: ``planner.loss``) is the user's loss;
    without it a registered model trains on soft Dice, any other on the mean of squared
    outputs. ``loss_record`` (how the loss and target were named) goes into
    plan_search.json's ``command``."""
    model = plan_model(spec, kwargs, shape[1])
    divisor = getattr(model, "divisor", None)
    if isinstance(divisor, int) and any(s % divisor for s in shape[2:]):
        raise InputError(f"shape {'x'.join(map(str, shape[1:]))}: spatial sides of {spec} "
                         f"must be multiples of {divisor}")
    loss = loss_fn if loss_fn is not None else \
        dice_loss if spec in MODELS else None  # registered models are segmentation nets
    extra = paper_candidates if spec == DEFAULT_MODEL else ()
    found = plan_memory(model, shape, profile, budget_bytes=budget, loss_fn=loss,
                        target=target, autocast_dtype=autocast_dtype, margin=margin, tier=tier,
                        extra=extra, name=spec)  # raises before anything is written
    d = found.search.as_dict()
    d["command"] = {"model": spec, "model_kwargs": kwargs, "shape": list(shape),
                    "profile": profile, "memory_budget_bytes": budget, "precision": precision,
                    **(loss_record or {})}
    d["memory_plan"] = found.plan.to_dict()
    if out is not None:
        _write(Path(out), found, d)
    return found, d


def _write(out: Path, found: PlanEvidence, d: dict[str, Any]) -> None:
    res, chosen = found.search, found.search.chosen
    assert chosen is not None
    byname = {c.name: c for c in res.candidates}
    panels = [(f"{n}: peak {byname[n].result.peak_bytes / 2**30:.2f} GiB, step "
               f"{byname[n].result.step_s:.3f} s", byname[n].result.timeline)
              for n in ("paper-config-1", "paper-config-3", "paper-config-4") if n in byname]
    panels.insert(0, (f"chosen: {chosen.name}: peak {chosen.result.peak_bytes / 2**30:.2f} "
                      f"GiB, step {chosen.result.step_s:.3f} s", chosen.result.timeline))
    plot_timelines(panels, out / "timeline.png", budget_bytes=res.budget_bytes)
    plot_pareto([(c.name, c.result.peak_bytes, c.result.step_s) for c in res.candidates],
                [c.name for c in res.front], chosen.name, out / "pareto.png",
                res.budget_bytes, res.usable_bytes)
    write_text(out / "memory_plan.json", found.plan.to_json() + "\n")
    write_json(out / SEARCH_FILE, d)
