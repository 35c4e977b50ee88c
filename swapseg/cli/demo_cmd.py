"""``swapseg demo``: the whole pipeline on synthetic data, in minutes on a CPU."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from swapseg.cli import grammar as g
from swapseg.cli.train_cmd import add_precision_args

__all__ = ["register", "run"]

HELP = "synthetic data -> train with swapping -> evaluate -> report"
EPILOG = """examples:
  swapseg demo                         # writes ./swapseg-demo/ (25 epochs, 6-10 min, 2 cores)
  swapseg demo --out /tmp/demo --quick # a smoke test in well under a minute
  swapseg demo --cases 30 --epochs 40  # more data, more epochs
  swapseg demo --time-limit 300        # stop after the epoch that passes 5 minutes
  swapseg demo --quick --precision bf16-mixed --compile # bfloat16 autocast, compiled
"""

DESCRIPTION = ("Generate BraTS-like phantoms, train the Isensee U-Net on whole volumes with "
               "every activation swapped to disk (the tier that frees memory on a CPU), "
               "predict and score the held-out cases, and write a report folder.")


def register(subparsers: Any) -> None:
    from swapseg.experiments.demo import DEFAULT_CASES, DEFAULT_OUT

    p = g.add_command(subparsers, "demo", HELP, DESCRIPTION, EPILOG)
    p.add_argument("--out", type=g.output_dir, default=DEFAULT_OUT,
                   help=f"report folder (default {DEFAULT_OUT})")
    p.add_argument("--cases", type=int, default=DEFAULT_CASES,
                   help=f"synthetic cases, split 60/20/20 (default {DEFAULT_CASES})")
    p.add_argument("--shape", type=g.integer(1),
                   help="cube side of the phantoms (default 48; a multiple of 16, of 4 with "
                        "--quick)")
    p.add_argument("--epochs", type=g.integer(1), help="maximum training epochs (default 25)")
    p.add_argument("--time-limit", type=g.number(0, float("inf")), metavar="SECONDS",
                   help="stop training after the epoch that passes this (default: no "
                        "limit; the demo stops by epochs, so its Dice does not depend on "
                        "the machine's load)")
    p.add_argument("--quick", action="store_true",
                   help="tiny network, 32^3, 2 epochs: checks the pipeline, not the Dice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    add_precision_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swapseg.experiments.demo import run_demo

    summary = run_demo(args.out, cases=args.cases, shape=args.shape, epochs=args.epochs,
                       quick=args.quick, seed=args.seed, time_limit=args.time_limit,
                       precision=args.precision or "32", compile=bool(args.compile),
                       progress=not args.no_progress and sys.stderr.isatty())
    d = summary["dice"]
    print(f"report: {args.out}/ (summary.json, boxplot.png, overlays/, log.csv, "
          f"swap_stats.json)")
    print(f"held-out Dice ({summary['n_cases']} cases): WT {d['WT']:.3f}  TC {d['TC']:.3f}  "
          f"ET {d['ET']:.3f}   total {summary['demo']['wall_s']['total_s']:.0f} s")
    return 0
