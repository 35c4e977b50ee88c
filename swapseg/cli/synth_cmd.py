"""``swapseg synth``: write BraTS-like synthetic phantoms in the BraTS 2018 layout."""

from __future__ import annotations

import argparse
from typing import Any

from swapseg.cli import grammar as g
from swapseg.data.synthetic import synthesize
from swapseg.errors import InputError
from swapseg.io import write_json

__all__ = ["register", "run"]

HELP = "write synthetic BraTS-like cases"
EPILOG = """examples:
  swapseg synth --out synth --cases 20 --shape 64 --seed 0
  swapseg synth --out synth-small --cases 4 --shape 48x48x40
  swapseg data check synth          # they load like real BraTS cases
"""

DESCRIPTION = ("Write phantoms with brain tissue, edema, enhancing rim and necrotic core in four"
               " MRI contrasts and a BraTS segmentation (labels 0/1/2/4), as "
               "<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz. Deterministic for a seed.")


def register(subparsers: Any) -> None:
    p = g.add_command(subparsers, "synth", HELP, DESCRIPTION, EPILOG)
    p.add_argument("--out", type=g.output_dir, required=True, help="output folder (created)")
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--shape", type=g.spatial_shape, default=(64, 64, 64),
                   help="volume size: N or DxHxW (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", type=g.output_path, metavar="PATH",
                   help="also write a summary (case names, shape, seed) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.cases < 1:
        raise InputError(f"--cases must be at least 1, got {args.cases}")
    paths = synthesize(args.out, args.cases, args.shape, args.seed)
    print(f"wrote {len(paths)} cases of {'x'.join(map(str, args.shape))} voxels to "
          f"{args.out}/ (seed {args.seed})")
    if args.json:
        write_json(args.json, {"out": str(args.out), "n_cases": len(paths),
                               "shape": list(args.shape), "seed": args.seed,
                               "cases": [p.name for p in paths]})
    return 0
