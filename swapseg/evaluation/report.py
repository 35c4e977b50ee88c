"""Evaluation reports: per-case CSV, summary JSON, Dice box plots, axial overlays.

The figures follow the reference paper: Fig. 5 (Dice per region as box plots) and Fig. 6
(axial FLAIR slices with the segmentation drawn over them: edema yellow,
necrotic/non-enhancing core green, enhancing tumor blue).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swapseg.evaluation.metrics import METRICS
from swapseg.io import write_text
from swapseg.plotting import pyplot, save_png

__all__ = ["REGIONS", "CLASS_COLORS", "columns", "flatten", "write_per_case_csv", "summarize",
           "boxplot", "overlay", "overlay_slices", "pick_slice",
           "label_classes"]

REGIONS = ("WT", "TC", "ET")

#: Display classes of Fig. 6, derived from the regions so that any label convention works:
#: edema = WT - TC, necrotic/non-enhancing core = TC - ET, enhancing = ET.
CLASS_COLORS = {"edema": (1.0, 0.9, 0.0), "necrotic/non-enhancing core": (0.0, 0.8, 0.0),
                "enhancing": (0.1, 0.35, 1.0)}


def columns(regions: Sequence[str] = REGIONS) -> list[str]:
    """Metric columns of per_case.csv: ``dice_WT, ..., hd95_mm_ET``."""
    return [f"{m}_{r}" for m in METRICS for r in regions]


def flatten(case_id: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """One CSV row from :func:`swapseg.evaluation.metrics.region_metrics` output."""
    row: dict[str, Any] = {"case_id": case_id}
    for m in METRICS:
        for r, v in metrics[m].items():
            row[f"{m}_{r}"] = float(v)
    return row


def write_per_case_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
                       extra: Sequence[str] = ()) -> None:
    """Write rows (``case_id``, ``extra`` columns, then :func:`columns`); NaN as ``nan``."""
    buf = io.StringIO()
    fields = ["case_id", *extra, *columns()]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def _json_number(x: float) -> float | None:
    """JSON has no NaN: undefined statistics become null."""
    return None if x is None or math.isnan(x) else float(x)


def summarize(rows: Sequence[Mapping[str, Any]], regions: Sequence[str] = REGIONS
              ) -> dict[str, Any]:
    """Means at the top level, then ``median``, ``std`` (sample, ddof=1) and ``n_nan``.

    NaN values (undefined under the ``nan`` empty convention) are left out of every
    statistic and counted in ``n_nan``; a statistic with no defined value is null.
    """
    out: dict[str, Any] = {"n_cases": len(rows)}
    median: dict[str, Any] = {}
    std: dict[str, Any] = {}
    n_nan: dict[str, Any] = {}
    for m in METRICS:
        out[m], median[m], std[m], n_nan[m] = {}, {}, {}, {}
        for r in regions:
            v = np.array([float(row[f"{m}_{r}"]) for row in rows], dtype=np.float64)
            ok = v[~np.isnan(v)]
            out[m][r] = _json_number(float(ok.mean())) if ok.size else None
            median[m][r] = _json_number(float(np.median(ok))) if ok.size else None
            std[m][r] = _json_number(float(ok.std(ddof=1))) if ok.size > 1 else None
            n_nan[m][r] = int(v.size - ok.size)
    out.update({"median": median, "std": std, "n_nan": n_nan})
    return out


def boxplot(groups: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
            metric: str = "Dice", title: str | None = None) -> None:
    """Box plots per region, one box per group side by side (the paper's Fig. 5).

    ``groups`` maps a group name (a method, e.g. ``full``/``patch``) to ``{region: values}``.
    Each case is also drawn as a point, so small samples stay readable.
    """
    plt = pyplot()
    names = list(groups)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(REGIONS) * max(len(names), 1) ** 0.5, 4))
    rng = np.random.default_rng(0)  # fixed jitter: the figure is reproducible
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, name in enumerate(names):
        pos = [i + (g - (len(names) - 1) / 2) * width for i in range(len(REGIONS))]
        data = [[v for v in groups[name].get(r, []) if not math.isnan(v)] for r in REGIONS]
        color = palette[g % len(palette)]
        ax.boxplot(data, positions=pos, widths=width * 0.8, showfliers=False,
                   patch_artist=True, boxprops={"facecolor": color, "alpha": 0.35},
                   medianprops={"color": "black"})
        for p, vals in zip(pos, data, strict=True):
            ax.scatter(p + rng.uniform(-width / 6, width / 6, len(vals)), vals, s=10,
                       color=color, zorder=3, label=name if p == pos[0] else None)
    ax.set_xticks(range(len(REGIONS)), [f"{r}" for r in REGIONS])
    ax.set_ylabel(metric)
    if metric.lower() in ("dice", "sensitivity", "specificity"):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    if len(names) > 1:
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or f"{metric} per region")
    fig.tight_layout()
    save_png(fig, path)


def label_classes(regions: np.ndarray) -> np.ndarray:
    """Regions ``(3, *S)`` bool -> display classes ``(*S)`` uint8: 0 none, 1 edema,
    2 necrotic/non-enhancing core, 3 enhancing (the order of :data:`CLASS_COLORS`)."""
    wt, tc, et = (np.asarray(r, bool) for r in regions)
    out = np.zeros(wt.shape, np.uint8)
    out[wt] = 1
    out[tc] = 2
    out[et] = 3
    return out


def pick_slice(truth: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most tumor (truth first, then prediction)."""
    for classes in (truth, pred):
        area = (classes > 0).sum(axis=tuple(a for a in range(3) if a != axis))
        if area.max() > 0:
            return int(area.argmax())
    return truth.shape[axis] // 2


def _rgba(classes: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros((*classes.shape, 4), np.float32)
    for k, color in enumerate(CLASS_COLORS.values(), start=1):
        rgba[classes == k] = (*color, alpha)
    return rgba


def overlay_slices(flair: np.ndarray, maps: Sequence[np.ndarray], path: str | Path, *,
                   panels: Sequence[str] = ("truth", "prediction"), title: str = "") -> None:
    """Draw one 2-D FLAIR slice once per class map ``(X, Y)`` (display classes), side by side.

    ``np.rot90`` shows the first array axis left-right and the second bottom-up.
    """
    plt = pyplot()
    from matplotlib.patches import Patch

    image = np.rot90(flair)
    lo, hi = np.percentile(image, (1, 99.5)) if image.any() else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.6))
    for ax, name, classes in zip(np.atleast_1d(axes), panels, maps, strict=True):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.imshow(_rgba(np.rot90(classes), 0.55))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [Patch(color=c, label=n) for n, c in CLASS_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    save_png(fig, path, dpi=100)


def overlay(flair: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str | Path, *,
            title: str = "", axis: int = 2, slice_index: int | None = None,
            panels: Sequence[str] = ("truth", "prediction"),
            extra: Sequence[np.ndarray] = ()) -> int:
    """Axial FLAIR slice with truth and prediction side by side (the paper's Fig. 6).

    ``flair`` is ``(X, Y, Z)``; ``truth``/``pred`` (and any ``extra`` panels) are region
    masks ``(3, X, Y, Z)`` or display classes ``(X, Y, Z)`` (see :func:`label_classes`);
    ``axis`` is the axial axis. The slice drawn (returned) is the one with the most truth
    tumor, unless ``slice_index`` is given.
    """
    maps = [label_classes(m) if m.ndim == 4 else m for m in (truth, pred, *extra)]
    k = pick_slice(maps[0], maps[1], axis) if slice_index is None else slice_index
    overlay_slices(np.take(flair, k, axis=axis), [np.take(m, k, axis=axis) for m in maps],
                   path, panels=panels, title=f"{title}  (slice {k})".strip())
    return k
