"""``swapseg predict``: segment every case of a folder with a trained checkpoint."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  swapseg predict --checkpoint runs/full/checkpoints/best.pt --input data/val --out pred
  swapseg predict --checkpoint best.pt --input data/val --out pred --window 128 --tta

Writes PRED/<case>.nii.gz (labels in the input's convention, 0/1/2/4 for BraTS 2017-2021,
on the original grid with the original affine and header) and PRED/predictions.json
(settings and seconds per case).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="segment a folder of cases with a checkpoint",
        description="Predict WT/TC/ET for every case under --input and write label maps "
                    "in the original space.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by swapseg train")
    p.add_argument("--input", required=True, help="dataset folder (any layout swapseg reads)")
    p.add_argument("--out", required=True, help="output folder for <case>.nii.gz")
    p.add_argument("--window", type=int, default=None,
                   help="sliding-window side (a multiple of the U-Net divisor); 0: the "
                        "whole volume at once; default: the patch side for patch-mode "
                        "checkpoints, the whole volume otherwise")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="overlap of neighbouring windows (default 0.5)")
    p.add_argument("--tta", action="store_true",
                   help="average the probabilities over the 8 flips of the three axes")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--convention", default=None,
                   help="label numbering of the output (default: the input's), "
                        "e.g. brats2017, brats2023, msd")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swapseg.evaluation.inference import predict_cases

    window = "auto" if args.window is None else args.window
    result = predict_cases(args.checkpoint, args.input, args.out, window=window,
                           overlap=args.overlap, tta=args.tta, device=args.device,
                           convention=args.convention)
    print(f"wrote {result['n_cases']} predictions to {args.out} "
          f"({result['total_s']:.1f} s, {args.out}/predictions.json)")
    return 0
