"""`swapseg plan`: choose what to swap and recompute so a training step fits a budget."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from swapseg.cli import grammar as g
from swapseg.errors import InputError
from swapseg.experiments.plan_report import format_table, run_plan
from swapseg.models.registry import build, parse_kwargs
from swapseg.offload.sizes import format_bytes as fmt
from swapseg.planner.profiles import PROFILES

EXAMPLES = """examples:
  swapseg plan --shape 4x192x192x192 --profile p100-nvlink --memory-budget 16GiB --out p192
  swapseg plan --shape 4x192x192x192 --precision bf16-mixed --memory-budget 8GiB
  swapseg plan --model monai.networks.nets:SegResNet \\
      --model-kwargs '{"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                       "init_filters": 16}' \\
      --shape 4x192x192x192 --profile a100-pcie4 --memory-budget 6GiB --out segresnet
  swapseg plan --model monai.networks.nets:BasicUNet \\
      --model-kwargs '{"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                       "features": [4, 4, 8, 8, 16, 4]}' \\
      --loss monai.losses:DiceCELoss --loss-kwargs '{"to_onehot_y": true, "softmax": true}' \\
      --target labels --shape 1x32x32x32 --memory-budget 100MiB --out plan-dicece
  swapseg plan --shape 4x96x96x96 --profile local --memory-budget 2GiB --out plan-local
  swapseg plan --shape 4x32x32x32 --memory-budget 200MiB --out plan32  # seconds on a CPU

Writes OUT/plan_search.json (every evaluated plan with swapped_tensors, swapped_bytes,
recomputed_tensors, peak_bytes, step_s, fits; the Pareto front; the chosen one),
OUT/memory_plan.json (the chosen plan alone, a MemoryPlan: {"swap": SwapPolicy,
"recompute": RecomputePolicy, "name", "model_class"}), OUT/timeline.png (simulated
compute and copy lanes with the memory curve) and OUT/pareto.png (predicted peak
against step time of every plan, the front, the budget, the chosen plan). Exit status 2
with the lowest reachable peak and what it consists of when no plan fits.

The loss: --loss module.path:callable builds it (called with --loss-kwargs, as --model
is); it takes (output, target) with --target, (output) without. Targets are built as
zeros: like-output (float32, shaped like the output: one-hot, as MONAI's losses take
without to_onehot_y), labels (Bx1xDxHxW int64 class indices: to_onehot_y=True), or a
whole shape and dtype, batch included: 1x1x64x64x64:int64, 1x64x64x64:int64 (class
indices without a channel axis, torch.nn.CrossEntropyLoss), 1x3x64x64x64:float16.
Dtypes: float32, float16, bfloat16, int64, int32, uint8, bool. Without --loss:
soft Dice for a registered model, the mean of squared outputs for any other.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = g.add_command(
        subparsers, "plan", "plan swapping/recomputation of any model to fit a memory budget",
        "Trace one training step under fake tensors, simulate every candidate plan on a "
        "hardware profile, and pick the fastest that fits.", EXAMPLES)
    p.add_argument("--model", default="isensee",
                   help="a registered name (isensee, the default) or module.path:callable")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of the model as a JSON object")
    p.add_argument("--shape", required=True, type=g.volume_shape,
                   help=f"one input: {g.SHAPE_HELP}")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--profile", default="p100-nvlink",
                   help=f"hardware profile: {', '.join([*PROFILES, 'local'])} (default "
                        "p100-nvlink, the paper's GPU)")
    p.add_argument("--memory-budget", required=True, type=g.byte_size, metavar="SIZE",
                   help=f"device memory the step must fit in: {g.SIZE_HELP}")
    p.add_argument("--precision", default="32", type=g.precision, choices=g.PRECISIONS,
                   help="32 (default), bf16-mixed or 16-mixed: trace under that autocast")
    p.add_argument("--margin", type=float, default=0.10,
                   help="fraction of the budget kept free (default 0.10)")
    p.add_argument("--loss", default=None, metavar="SPEC",
                   help="module.path:callable (or path/to/file.py:callable) that builds the "
                        "training loss, e.g. monai.losses:DiceCELoss (default: soft Dice "
                        "for a registered model, the mean of squared outputs otherwise)")
    p.add_argument("--loss-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of the loss as a JSON object")
    p.add_argument("--target", default=None, type=g.loss_target, metavar="TARGET",
                   help=f"the loss's target, built as zeros (needs --loss): {g.TARGET_HELP}")
    p.add_argument("--out", type=g.output_dir,
                   help="output folder for plan_search.json, memory_plan.json, "
                        "timeline.png, pareto.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kwargs = parse_kwargs(args.model_kwargs)
    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    shape = args.shape.input_shape(args.batch, kwargs.get("in_channels", 4))
    loss_fn, target, record = user_loss(args, shape)
    try:
        found, d = run_plan(args.model, kwargs, shape, args.profile, args.memory_budget,
                            args.out, margin=args.margin,
                            autocast_dtype=g.autocast_dtype(args.precision),
                            precision=args.precision, loss_fn=loss_fn, target=target,
                            loss_record=record)
    except InputError as exc:
        if loss_fn is None or target is not None or "positional argument" not in str(exc):
            raise
        raise InputError(f"{exc} (the loss takes a target: give --target)") from None
    t = d["trace"]
    print(f"traced {t['saved_tensors']} saved tensors ({fmt(t['saved_bytes'])}, "
          f"precision {args.precision}) in {t['trace_s']:.2f} s; budget "
          f"{fmt(d['budget_bytes'])}, usable {fmt(d['usable_bytes'])} on "
          f"{found.profile.name}")
    print(format_table(found.search))
    c = d["chosen"]
    print(f"chosen: {c['name']} (predicted peak {fmt(c['peak_bytes'])} of "
          f"{fmt(d['usable_bytes'])} usable, step {c['step_s']:.3f} s)")
    if args.out:
        print(f"wrote {args.out}/plan_search.json, {args.out}/memory_plan.json, "
              f"{args.out}/timeline.png and {args.out}/pareto.png")
    return 0


def user_loss(args: argparse.Namespace, shape: tuple[int, ...]
              ) -> tuple[Callable[..., Any] | None, Any, dict[str, Any]]:
    """``--loss``/``--loss-kwargs``/``--target`` as (loss, target description, what
    plan_search.json records); (None, None, {}) without them. Raises InputError before
    any work: a target without a loss, kwargs without a loss, a spec that does not build
    a callable, a target whose sides are not the input's."""
    if args.loss is None:
        for flag, value in (("--target", args.target), ("--loss-kwargs", args.loss_kwargs)):
            if value is not None:
                raise InputError(f"{flag} needs --loss (the loss that takes it)")
        return None, None, {}
    kwargs = parse_kwargs(args.loss_kwargs, "loss")
    target = args.target.describe(shape) if args.target is not None else None
    loss = build(args.loss, kwargs, "loss")
    if not callable(loss):
        raise InputError(f"loss {args.loss!r} built a {type(loss).__name__}, which is not "
                         "callable: name a loss class or a function that returns the loss")
    return loss, target, {"loss": args.loss, "loss_kwargs": kwargs,
                          "target": args.target.text if args.target else None}
