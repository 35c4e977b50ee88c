"""``swapseg experiment full-vs-patch``: the paper's full-volume vs patch comparison."""

from __future__ import annotations

import argparse
import shlex
import sys

from swapseg.cli import grammar as g
from swapseg.cli.config_flags import add_config_args, config_changes, flags
from swapseg.cli.grammar import parse_bytes
from swapseg.devices import resolve_device
from swapseg.experiments import full_vs_patch
from swapseg.progress import cli_progress
from swapseg.training.config import brats_full
from swapseg.training.interrupt import Interrupted, stop_signals

#: The config fields that experiment's flags set: the protocol both arms share.
CONFIG_FIELDS = ("folds", "max_epochs", "early_stop", "lr_patience", "max_train_s", "shape",
                 "zoom", "lr", "dropout", "base_filters", "depth", "workers", "device", "seed",
                 "precision")

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  # a small synthetic run on a CPU (minutes)
  swapseg synth --out synth --cases 9 --shape 48
  swapseg experiment full-vs-patch --data synth --out exp --folds 3 --epochs 5 \\
      --shape 48 --base-filters 8 --depth 4
  # both arms in bfloat16 autocast (the full-volume arm swaps half the bytes)
  swapseg experiment full-vs-patch --data synth --out exp-bf16 --folds 3 --epochs 5 \\
      --shape 48 --precision bf16-mixed
  # the paper's protocol on a GPU (days): 192^3, 128^3 patches, 5 folds, early stop 50
  swapseg experiment full-vs-patch --data BraTS2017 --out exp-paper --folds 5 \\
      --shape 192 --patch 128 --epochs 500 --swap auto

For each fold: trains full volumes (with swapping) and patches with the same protocol and
split, predicts and scores the fold's test cases. Writes OUT/summary.json, OUT/report.md,
OUT/per_case.csv, OUT/boxplot_dice.png and OUT/overlays/. Rerunning the same command
reuses finished folds and resumes an interrupted one.
"""


def _bytes(text: str) -> int:
    return parse_bytes(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = g.add_command(subparsers, "experiment", "rerun the paper's comparisons (full-vs-patch)",
                      "Reproduce the paper's experiments on your data and hardware.", EXAMPLES)
    q = g.add_command(g.add_action(p, "experiment"), "full-vs-patch",
                      "full volumes (swapping) vs patches, per fold",
                      "Train full-volume and patch models per fold with the same protocol, "
                      "and compare quality and time.", EXAMPLES)
    q.add_argument("--data", required=True, help="dataset folder with segmentations")
    q.add_argument("--out", type=g.output_dir, required=True, help="experiment folder")
    q.add_argument("--run-folds", type=g.integer(1), default=None, metavar="N",
                   help="run only the first N folds (default: all)")
    add_config_args(q, CONFIG_FIELDS)
    q.add_argument("--patch", type=g.integer(1), default=None,
                   help="patch side (default: 2/3 of the volume side, the paper's 128/192)")
    q.add_argument("--patches-per-volume", type=g.integer(1), metavar="N", default=None,
                   help="patches per volume per epoch (default: ceil(volume / patch^3))")
    q.add_argument("--swap", default="auto", metavar="auto|all|none|FILE.json",
                   help="full-volume memory plan, as in `swapseg train`: auto = planned "
                        "once into OUT/plan.json for --memory-budget (or the device's "
                        "available memory) for every fold; all = every activation to the "
                        "tier that frees the device's memory (disk on a CPU); none; or a "
                        "SwapPolicy or MemoryPlan JSON file (default auto)")
    q.add_argument("--memory-budget", type=_bytes, default=None, metavar="SIZE",
                   help="memory budget of the planner with --swap auto, e.g. 16GiB")
    q.add_argument("--overlays", type=g.integer(0), default=4,
                   help="overlays of the cases where the modes differ most (default 4)")
    q.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with g.fields_as_flags(flags()):
        base = brats_full(data=str(args.data), out=str(args.out),
                          **config_changes(args, CONFIG_FIELDS))

    resolve_device(base.device)  # --device cuda without CUDA: one line, before any work
    command = "swapseg " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    try:
        with stop_signals():
            summary = full_vs_patch.run_full_vs_patch(
                base, args.out, patch=args.patch, patches_per_volume=args.patches_per_volume,
                swap=args.swap, memory_budget=args.memory_budget, run_folds=args.run_folds,
                overlays=args.overlays, command=command,
                progress=cli_progress(args.no_progress) == "bar")
    except Interrupted as exc:  # finished folds are kept; the same command goes on
        print(f"swapseg: {exc}; continue with the same command"
              + (f": {command}" if command else ""), file=sys.stderr)
        return exc.exit_status
    d = summary["modes"]
    r = summary["time"]["ratios"]
    for mode in ("full", "patch"):
        dice = " ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                        for k, v in d[mode]["dice"].items())
        print(f"{mode:5s} mean Dice {dice}")
    ratio = r["total_s_patch_over_full"]
    print(f"patch/full time: epoch {r['epoch_s_patch_over_full'] or float('nan'):.2f}x, "
          f"total {ratio if ratio is not None else float('nan'):.2f}x; "
          f"report: {args.out}/report.md")
    return 0
