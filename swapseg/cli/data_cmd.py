"""``swapseg data check DIR``: is this dataset folder usable, and if not, why."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from swapseg.cli import grammar as g
from swapseg.data.check import check_dataset
from swapseg.io import write_json
from swapseg.progress import cli_progress

__all__ = ["register", "run"]

HELP = "inspect a dataset folder (swapseg data check DIR)"
EPILOG = """examples:
  swapseg data check ../shared/data/brats18-sample
  swapseg data check /data/MICCAI_BraTS_2018_Data_Training --skip-bad --json check.json
  swapseg data check /data/Task01_BrainTumour --quick     # headers only, no decoding

exit status: 0 when the dataset is usable, 2 when it is not (every problem is listed).
"""

DESCRIPTION = ("Dataset tools. 'check' finds the cases (BraTS 2017-2023 or MSD Task01 layout), "
               "decodes each one with the training loader, and prints the layout, case count, "
               "shapes, spacings, label sets and every problem.")


def register(subparsers: Any) -> None:
    p = g.add_command(subparsers, "data", HELP, DESCRIPTION, EPILOG)
    c = g.add_command(g.add_action(p, "data_command"), "check", "check a dataset folder",
                      epilog=EPILOG)
    c.add_argument("dir", metavar="DIR", help="dataset folder")
    c.add_argument("--skip-bad", action="store_true",
                   help="list bad cases and leave them out; usable if any good case is left")
    c.add_argument("--quick", action="store_true",
                   help="read headers only (fast; misses corrupt data, NaNs, bad labels)")
    c.add_argument("--json", type=g.output_path, metavar="PATH",
                   help="also write the report as JSON")
    c.add_argument("--no-progress", action="store_true",
                   help="no progress bar or per-case lines")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = check_dataset(args.dir, skip_bad=args.skip_bad, quick=args.quick,
                           progress=cli_progress(args.no_progress))
    print("\n".join(report.lines()))
    if args.json:
        write_json(args.json, report.to_dict())
    if not report.usable:
        probs = report.problems
        first = probs[0] if probs else "no good case"
        print(f"swapseg: error: dataset not usable: {len(probs)} problem(s); first: {first}",
              file=sys.stderr)
        return 2
    return 0
