"""``swapseg synth``: write BraTS-like synthetic phantoms in the BraTS 2018 layout."""

from __future__ import annotations

import argparse
from typing import Any

from swapseg.errors import InputError

__all__ = ["register", "run"]

EPILOG = """examples:
  swapseg synth --out synth --cases 20 --shape 64 --seed 0
  swapseg synth --out synth-small --cases 4 --shape 48,48,40
  swapseg data check synth          # they load like real BraTS cases
"""


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (use 64 or 64,64,48)") \
            from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (use 64 or 64,64,48)")
    return tuple(parts)  # type: ignore[return-value]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth", help="write synthetic BraTS-like cases",
        description="Write phantoms with brain tissue, edema, enhancing rim and necrotic core "
                    "in four MRI contrasts and a BraTS segmentation (labels 0/1/2/4), as "
                    "<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz. Deterministic for a seed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--shape", type=_shape, default=(64, 64, 64),
                   help="volume size, S or X,Y,Z (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", metavar="PATH",
                   help="also write a summary (case names, shape, seed) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swapseg.data.synthetic import synthesize

    if args.cases < 1:
        raise InputError(f"--cases must be at least 1, got {args.cases}")
    paths = synthesize(args.out, args.cases, args.shape, args.seed)
    print(f"wrote {len(paths)} cases of {'x'.join(map(str, args.shape))} voxels to "
          f"{args.out}/ (seed {args.seed})")
    if args.json:
        from swapseg.io import write_json
        write_json(args.json, {"out": str(args.out), "n_cases": len(paths),
                               "shape": list(args.shape), "seed": args.seed,
                               "cases": [p.name for p in paths]})
    return 0
