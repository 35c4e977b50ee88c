"""`swapseg plan`: choose what to swap and recompute so a training step fits a budget."""

from __future__ import annotations

import argparse

from swapseg.offload.plan.devices import PROFILES
from swapseg.offload.plan.report import MODELS, format_table, run_plan

EXAMPLES = """examples:
  swapseg plan --model isensee --shape 4x192x192x192 --device p100-nvlink --memory 16GiB --out p192
  swapseg plan --shape 4x256x256x256 --device a100-pcie4 --memory 40GiB --out plan256
  swapseg plan --shape 4x96x96x96 --device local --memory 2GiB --out plan-local

Writes OUT/plan.json (candidates with swapped_tensors, swapped_bytes, recomputed_tensors,
peak_bytes, step_s, fits; and the chosen one) and OUT/timeline.png (simulated compute and
copy lanes over one step with the memory curve, for the chosen plan and paper configs
1, 3, 4). Exit status 2 with the missing bytes when no plan fits.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="plan swapping/recomputation to fit a memory budget",
        description="Trace one training step under fake tensors, simulate every candidate "
                    "plan on a device profile, and pick the fastest that fits.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="isensee", choices=MODELS)
    p.add_argument("--shape", required=True, help="CxDxHxW (or BxCxDxHxW), e.g. 4x192x192x192")
    p.add_argument("--batch", type=int, default=1, help="batch size when --shape has 4 dims")
    p.add_argument("--device", default="p100-nvlink",
                   help=f"device profile: {', '.join([*PROFILES, 'local'])} (default "
                        "p100-nvlink, the paper's GPU)")
    p.add_argument("--memory", required=True, help="memory budget, e.g. 16GiB, 12.5GB")
    p.add_argument("--margin", type=float, default=0.10,
                   help="fraction of the budget kept free (default 0.10)")
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--out", help="output folder for plan.json and timeline.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res, d = run_plan(args.model, args.shape, args.device, args.memory, args.out,
                      batch=args.batch, margin=args.margin, base_filters=args.base_filters,
                      depth=args.depth)
    t = d["trace"]
    print(f"traced {t['saved_tensors']} saved tensors ({t['saved_bytes'] / 2**30:.2f} GiB) "
          f"in {t['trace_s']:.2f} s; budget {d['budget_bytes'] / 2**30:.2f} GiB, usable "
          f"{d['usable_bytes'] / 2**30:.2f} GiB on {res.device.name}")
    print(format_table(res))
    print(f"chosen: {d['chosen']['name']}")
    if args.out:
        print(f"wrote {args.out}/plan.json and {args.out}/timeline.png")
    return 0
