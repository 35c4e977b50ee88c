"""``swapseg predict``: segment every case of a folder with a trained checkpoint."""

from __future__ import annotations

import argparse

from swapseg.cli import grammar as g
from swapseg.data.labels import CONVENTIONS
from swapseg.errors import InputError
from swapseg.evaluation.predictor import INFERENCE_MODES
from swapseg.predict.inference import predict_cases
from swapseg.predict.runs import find_fold
from swapseg.progress import cli_progress

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  swapseg predict --checkpoint runs/full/checkpoints/best.pt --input data/val --out pred
  swapseg predict --run runs/cv --fold 2 --out pred/fold2      # that fold's test cases
  swapseg predict --checkpoint best.pt --input data/val --out pred --inference windows --tta

Prediction reads the four modalities only (a case's segmentation file is never opened)
and covers the whole brain box, whatever the input's size: in one pass padded to the
network's divisor, or by sliding windows of the training window (the training shape, or
the patch of a patch-mode checkpoint). --inference auto (default) takes windows for
patch-mode checkpoints, and otherwise one pass when its predicted activation bytes fit in
half the available memory (free GPU memory, or available RAM), windows when not;
--inference one-pass / windows force either, --window N sets the windows' side.

Writes PRED/<case>.nii.gz (labels in the input's convention, 0/1/2/4 for BraTS 2017-2021,
on the original grid with the original affine and header) and PRED/predictions.json
(settings, and per case the brain box, one-pass or windows, and seconds).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = g.add_command(
        subparsers, "predict", "segment a folder of cases with a checkpoint",
        "Predict WT/TC/ET for every case under --input and write label maps in the "
        "original space.", EXAMPLES)
    p.add_argument("--checkpoint", help="a checkpoint written by swapseg train")
    p.add_argument("--run", help="a swapseg train/experiment run folder (with --fold): "
                                 "predict that fold's test cases with its best.pt")
    p.add_argument("--fold", type=g.integer(0), help="the fold of --run")
    p.add_argument("--input", help="dataset folder (any layout swapseg reads); with --run, "
                                   "default: the run's --data")
    p.add_argument("--out", type=g.output_dir, required=True,
                   help="output folder for <case>.nii.gz")
    p.add_argument("--inference", choices=INFERENCE_MODES, default="auto",
                   help="one-pass, windows, or auto (default; see below)")
    p.add_argument("--window", type=g.integer(1), default=None, metavar="N",
                   help="windows of N^3 voxels (a multiple of the U-Net divisor; implies "
                        "--inference windows); default: the training window")
    p.add_argument("--overlap", type=g.number(0, 1, high_open=True), default=0.5,
                   help="overlap of neighbouring windows (default 0.5)")
    p.add_argument("--tta", action="store_true",
                   help="average the logits over the 8 flips of the three axes")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--convention", choices=tuple(CONVENTIONS), default=None,
                   help="label numbering of the output (default: the input's)")
    p.add_argument("--precision", type=g.precision, choices=g.PRECISIONS, default=None,
                   help="autocast of the forward passes: 32, bf16-mixed or 16-mixed "
                        "(default: the checkpoint's training precision)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar or per-case lines")
    p.set_defaults(func=run)


def _sources(args: argparse.Namespace) -> tuple[str, str, list[str] | None]:
    """(checkpoint, input folder, case ids or None for all)."""
    if (args.run is None) == (args.checkpoint is None):
        raise InputError("give either --checkpoint (with --input) or --run with --fold")
    if args.checkpoint is not None:
        if args.fold is not None:
            raise InputError("--fold goes with --run, not with --checkpoint")
        if args.input is None:
            raise InputError("--input is required with --checkpoint")
        return args.checkpoint, args.input, None
    if args.fold is None:
        raise InputError("--run needs --fold K")
    fold = find_fold(args.run, args.fold)
    data = args.input or fold.data
    if data is None:
        raise InputError(f"--run {args.run}: its config records no data folder; pass --input")
    return str(fold.checkpoint), data, list(fold.test_ids)


def run(args: argparse.Namespace) -> int:
    checkpoint, data, ids = _sources(args)
    result = predict_cases(checkpoint, data, args.out, inference=args.inference,
                           window=args.window, overlap=args.overlap, tta=args.tta,
                           device=args.device, convention=args.convention, case_ids=ids,
                           progress=cli_progress(args.no_progress), precision=args.precision)
    modes = sorted({r["inference"] for r in result["cases"]})
    print(f"wrote {result['n_cases']} predictions to {args.out} ({'/'.join(modes) or '-'}, "
          f"{result['total_s']:.1f} s, {args.out}/predictions.json)")
    return 0
