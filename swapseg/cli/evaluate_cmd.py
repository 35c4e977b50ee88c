"""``swapseg evaluate``: score a folder of predictions against a dataset's segmentations."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  swapseg evaluate --pred pred --truth data/val --out eval
  swapseg evaluate --pred other_tool_output --truth data/val --out eval --empty nan

Predictions are named <case>.nii.gz (or <case>_pred / _seg / _prediction), one per truth
case, in the truth's label convention and grid. Writes EVAL/per_case.csv,
EVAL/summary.json (means; "median", "std" and "n_nan" per metric and region),
EVAL/boxplot.png and EVAL/overlays/<case>.png.

Empty regions: with --empty one (default, as BraTS) an empty truth and prediction give
Dice 1 and HD95 0, and exactly one empty gives HD95 = the image diagonal in mm; with
--empty nan every undefined value is NaN and left out of the statistics.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice, sensitivity, specificity and HD95 of a prediction folder",
        description="Score label-map predictions against ground truth per case and region "
                    "(WT, TC, ET).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="folder of <case>.nii.gz predictions")
    p.add_argument("--truth", required=True, help="dataset folder with segmentations")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--empty", choices=("one", "nan"), default="one",
                   help="empty-region convention (default: one, as BraTS)")
    p.add_argument("--overlays", type=int, default=None, metavar="N",
                   help="draw overlays for the first N cases only (default: all; 0: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swapseg.evaluation.evaluate import evaluate_folders

    summary = evaluate_folders(args.pred, args.truth, args.out, empty=args.empty,
                               overlays=args.overlays)
    dice = summary["dice"]
    fmt = " ".join(f"{r} {dice[r]:.3f}" if dice[r] is not None else f"{r} n/a"
                   for r in ("WT", "TC", "ET"))
    print(f"{summary['n_cases']} cases, mean Dice {fmt}; report in {args.out}")
    return 0
