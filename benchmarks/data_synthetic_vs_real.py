"""Figure: one axial slice per modality of a synthetic phantom and of a real BraTS case.

Both are shown as the network sees them (z-scored, cropped to the brain), the real case
downsampled 3x to the phantom's resolution. Writes docs/synthetic_vs_real.png by default.

    python benchmarks/data_synthetic_vs_real.py [--real DIR/CASE] [--out PNG] [--shape 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from swapseg.data.brats import MODALITIES, find_cases, load_case, preprocess
from swapseg.data.synthetic import synthesize

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "brats18-sample"
LABEL_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.9, 0.2), 4: (1.0, 0.9, 0.1)}


def _axial(prep) -> int:
    """The axial slice with the most tumor."""
    return int(np.argmax((prep.seg != 0).sum(axis=(0, 1))))


def _row(axes, prep, title: str) -> None:
    z = _axial(prep)
    for ax, c in zip(axes[:4], range(4), strict=True):
        ax.imshow(prep.image[c, :, :, z].T, cmap="gray", vmin=-2.5, vmax=4, origin="lower")
        ax.set_title(f"{title}: {MODALITIES[c]}", fontsize=7)
    overlay = np.zeros((*prep.seg.shape[:2], 4))
    for label, rgb in LABEL_COLOURS.items():
        overlay[prep.seg[:, :, z] == label] = (*rgb, 0.8)
    axes[4].imshow(prep.image[0, :, :, z].T, cmap="gray", vmin=-2.5, vmax=4, origin="lower")
    axes[4].imshow(overlay.transpose(1, 0, 2), origin="lower")
    axes[4].set_title(f"{title}: labels 1/2/4", fontsize=7)
    for ax in axes:
        ax.set_axis_off()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=SAMPLE / "Brats18_TCIA01_201_1")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "synthetic_vs_real.png")
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=int, default=0, help="which synthetic case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(tmp, args.case + 1, args.shape, args.seed)
        case = find_cases(tmp).cases[args.case]
        synth = preprocess(load_case(case), args.shape)
    real_case = next(c for c in find_cases(args.real.parent).cases
                     if c.case_id == args.real.name)
    real = preprocess(load_case(real_case), 64, zoom=3)
    fig, axes = plt.subplots(2, 5, figsize=(10, 4.4), dpi=72)
    _row(axes[0], synth, "synthetic")
    _row(axes[1], real, "real (3x down)")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
