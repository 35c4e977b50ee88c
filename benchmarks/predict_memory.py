"""Check the one-pass memory rule of ``swapseg.evaluation.predictor`` against measurements.

For each cube side, a fresh subprocess builds the Isensee U-Net, allocates the input, and
runs one no-grad forward pass; the measured figure is the process's peak RSS during the
forward minus the peak RSS before it (``ru_maxrss``; large tensors are mmap-allocated and
returned, so this tracks the tensors alive at once). It prints the rule's prediction, the
measurement and their ratio, and writes ``--json``. The rule must be at or above the
measurement (ratio >= 1) for ``auto`` never to pick a one pass that does not fit.

    OMP_NUM_THREADS=1 python benchmarks/predict_memory.py --sides 48 64 96 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import resource, sys, torch
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.evaluation.predictor import predict_logits, predicted_bytes
side, base, depth = (int(v) for v in sys.argv[1:4])
torch.manual_seed(0)
model = Isensee3DUNet(base_filters=base, depth=depth).eval()
x = torch.randn(1, 4, side, side, side)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
predict_logits(model, x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before, predicted_bytes(model, (side,) * 3))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[48, 64, 96])
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for side in args.sides:
        out = subprocess.run([sys.executable, "-c", CHILD, str(side), str(args.base_filters),
                              str(args.depth)], check=True, capture_output=True, text=True)
        measured, predicted = (int(v) for v in out.stdout.split())
        rows.append({"side": side, "measured_peak_rss_delta_bytes": measured,
                     "predicted_bytes": predicted, "predicted_over_measured":
                     predicted / measured if measured else None})
        print(f"{side}^3: predicted {predicted / 2**20:.0f} MiB, measured "
              f"{measured / 2**20:.0f} MiB (peak RSS delta), ratio "
              f"{rows[-1]['predicted_over_measured']:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"base_filters": args.base_filters, "depth": args.depth,
                       "measure": "peak RSS delta of one no-grad forward (ru_maxrss)",
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
