"""``swapseg evaluate``: score a folder of predictions against ground-truth labels."""

from __future__ import annotations

import argparse

from swapseg.cli import grammar as g

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  swapseg evaluate --pred pred --truth data/val --out eval
  swapseg evaluate --pred other_tool_output --truth labelsTs --out eval --empty nan
  swapseg evaluate --pred pred23 --truth brats2023_labels --out eval --convention brats2023
  swapseg evaluate --pred pred --truth data/val --out eval --only-predicted

--truth is a dataset folder (any layout swapseg reads, every case with its segmentation)
or a folder of label files alone: <case>.nii.gz, <case>_seg.nii.gz or <case>-seg.nii.gz.
Label numbering: the dataset's, brats2017 (1 necrotic core, 2 edema, 4 enhancing) for a
label folder, or --convention (brats2023: 1 NETC, 2 SNFH, 3 ET; msd).

Predictions are named <case>.nii.gz (or <case>_pred / _seg / _prediction), one per truth
case, in the same numbering, grid and affine as the truth (--only-predicted: the truth
cases without a prediction are skipped and listed, not an error). Writes EVAL/per_case.csv,
EVAL/summary.json (means; "median", "std" and "n_nan" per metric and region),
EVAL/boxplot.png and EVAL/overlays/<case>.png.

Empty regions: with --empty one (default, as BraTS) an empty truth and prediction give
Dice 1 and HD95 0, and exactly one empty gives HD95 = the image diagonal in mm; with
--empty nan every undefined value is NaN and left out of the statistics.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from swapseg.data.labels import CONVENTIONS

    p = g.add_command(
        subparsers, "evaluate", "Dice, sensitivity, specificity and HD95 of a prediction folder",
        "Score label-map predictions against ground truth per case and region (WT, TC, ET).",
        EXAMPLES)
    p.add_argument("--pred", required=True, help="folder of <case>.nii.gz predictions")
    p.add_argument("--truth", required=True,
                   help="dataset folder with segmentations, or a folder of label files")
    p.add_argument("--out", type=g.output_dir, required=True, help="report folder")
    p.add_argument("--empty", choices=("one", "nan"), default="one",
                   help="empty-region convention (default: one, as BraTS)")
    p.add_argument("--overlays", type=g.integer(0), default=None, metavar="N",
                   help="draw overlays for the first N cases only (default: all; 0: none)")
    p.add_argument("--convention", choices=tuple(CONVENTIONS), default=None,
                   help="label numbering of truth and predictions (default: the dataset's; "
                        "brats2017 for a folder of label files)")
    p.add_argument("--only-predicted", action="store_true",
                   help="score only the truth cases that have a prediction; one line says "
                        "which were skipped (default: a missing prediction is an error)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar or per-case lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swapseg.evaluation.evaluate import evaluate_folders
    from swapseg.progress import cli_progress

    summary = evaluate_folders(args.pred, args.truth, args.out, empty=args.empty,
                               overlays=args.overlays, convention=args.convention,
                               only_predicted=args.only_predicted,
                               progress=cli_progress(args.no_progress))
    dice = summary["dice"]
    fmt = " ".join(f"{r} {dice[r]:.3f}" if dice[r] is not None else f"{r} n/a"
                   for r in ("WT", "TC", "ET"))
    print(f"{summary['n_cases']} cases, mean Dice {fmt}; report in {args.out}")
    if summary["skipped_cases"]:
        print(skipped_line(summary["skipped_cases"], summary["n_truth_cases"]))
    return 0


def skipped_line(skipped: list[str], n_truth: int, shown: int = 5) -> str:
    """``skipped 10 of 12 truth cases without a prediction: A, B, C, D, E and 5 more``."""
    names = ", ".join(skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (f"skipped {len(skipped)} of {n_truth} truth cases without a prediction "
            f"(--only-predicted): {names}{more}")
