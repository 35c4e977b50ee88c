"""Outputs of the full-vs-patch experiment: paired statistics, summary.json, report.md, figures.

Every test case is scored once per mode (it is in the test part of exactly one fold), so
the comparison is paired by case: difference = full - patch, per metric and region. Its
spread is given across cases (std, 95% t interval, Wilcoxon signed-rank p) and across
folds (std of the per-fold mean differences).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import stats as st

from swapseg.data.brats import find_cases
from swapseg.data.labels import labels_to_regions
from swapseg.envinfo import environment
from swapseg.evaluation import report
from swapseg.evaluation.evaluate import flair_volume
from swapseg.evaluation.metrics import METRICS
from swapseg.experiments.curves import learning_curves
from swapseg.experiments.markdown import report_md
from swapseg.io import write_json, write_text

__all__ = ["PAPER", "paired", "write_outputs"]

REGIONS = ("WT", "TC", "ET")
MODES = ("full", "patch")

#: Imai et al. (2019), Table 2 (means of 5 runs, 57 test cases) and Fig. 4.
PAPER = {
    "full": {"dice": {"WT": 0.865, "TC": 0.771, "ET": 0.641},
             "sensitivity": {"WT": 0.870, "TC": 0.799, "ET": 0.675},
             "specificity": {"WT": 0.966, "TC": 0.969, "ET": 0.971}},
    "patch": {"dice": {"WT": 0.826, "TC": 0.730, "ET": 0.637},
              "sensitivity": {"WT": 0.826, "TC": 0.758, "ET": 0.671},
              "specificity": {"WT": 0.963, "TC": 0.969, "ET": 0.971}},
    "iterations_per_epoch": {"full": 171, "patch": 387},
    "epoch_time_patch_over_full": 2.98,
    "total_time_patch_over_full": 3.53,
}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def paired(full: list[float], patch: list[float], folds: list[int],
           higher_is_better: bool = True) -> dict[str, Any]:
    """Statistics of the per-case differences full - patch (NaN pairs left out).

    ``full_better``/``patch_better`` count the cases each mode wins; for a distance
    (``higher_is_better=False``) a negative difference is a win for full volumes.
    """
    d = np.asarray(full, float) - np.asarray(patch, float)
    ok = ~np.isnan(d)
    d, f = d[ok], np.asarray(folds)[ok]
    n = int(d.size)
    sign = 1.0 if higher_is_better else -1.0
    out: dict[str, Any] = {"n": n, "mean_diff": _num(d.mean()) if n else None,
                           "median_diff": _num(float(np.median(d))) if n else None,
                           "std_diff": None, "ci95": None, "wilcoxon_p": None,
                           "full_better": int((sign * d > 0).sum()),
                           "patch_better": int((sign * d < 0).sum()),
                           "fold_mean_diffs": [_num(d[f == k].mean()) for k in sorted(set(f))],
                           "fold_std": None}
    if n > 1:
        sd = float(d.std(ddof=1))
        half = float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(std_diff=_num(sd), ci95=[_num(d.mean() - half), _num(d.mean() + half)])
    if np.count_nonzero(d) >= 1 and n >= 2:
        out["wilcoxon_p"] = _num(float(st.wilcoxon(d).pvalue))
    fm = [x for x in out["fold_mean_diffs"] if x is not None]
    if len(fm) > 1:
        out["fold_std"] = _num(float(np.std(fm, ddof=1)))
    return out


def _case_rows(out: Path, records: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for mode, recs in records.items():
        rows[mode] = []
        for rec in recs:
            path = out / "eval" / mode / f"fold{rec['fold']}" / "per_case.csv"
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    rows[mode].append({"case_id": row["case_id"], "fold": rec["fold"],
                                       **{k: float(v) for k, v in row.items()
                                          if k != "case_id"}})
    return rows


def _best_s(record: dict[str, Any]) -> float | None:
    """Training seconds to the best epoch, the checkpoint that was tested."""
    best = record["best_epoch"]
    return sum(record["epoch_s"][:best]) if best >= 1 else None


def _mean(values: list[Any]) -> float | None:
    ok = [v for v in values if v is not None]
    return _num(float(np.mean(ok))) if ok else None


def _timing(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    for mode, recs in records.items():
        steps = [r["iterations_per_epoch"] * r["epochs"] for r in recs]
        best_s = [_best_s(r) for r in recs]
        epochs = [s for r in recs for s in r["epoch_s"]]
        t[mode] = {"iterations_per_epoch": [r["iterations_per_epoch"] for r in recs],
                   "epoch_s_mean": _num(float(np.mean(epochs))) if epochs else None,
                   "epochs": [r["epochs"] for r in recs],
                   "best_epoch": [r["best_epoch"] for r in recs],
                   "stop_reason": [r["stop_reason"] for r in recs],
                   "total_s": [r["train_s"] for r in recs],
                   "total_s_mean": _num(float(np.mean([r["train_s"] for r in recs]))),
                   # equal epochs are not equal work: steps and time to the tested checkpoint
                   "optimizer_steps": steps, "optimizer_steps_mean": _mean(steps),
                   "best_s": best_s, "best_s_mean": _mean(best_s),
                   "predict_s": [r["predict_s"] for r in recs]}

    def ratio(key: str) -> float | None:
        a, b = t["patch"][key], t["full"][key]
        return _num(a / b) if a is not None and b else None

    t["ratios"] = {"epoch_s_patch_over_full": ratio("epoch_s_mean"),
                   "total_s_patch_over_full": ratio("total_s_mean"),
                   "best_s_patch_over_full": ratio("best_s_mean"),
                   "optimizer_steps_patch_over_full": ratio("optimizer_steps_mean"),
                   "iterations_per_epoch_patch_over_full": _num(
                       float(np.mean(t["patch"]["iterations_per_epoch"]))
                       / max(float(np.mean(t["full"]["iterations_per_epoch"])), 1e-12))}
    return t


def _overlays(out: Path, rows: dict[str, list[dict]], n: int) -> list[str]:
    """Truth | full | patch for the ``n`` cases whose mean Dice differs most."""
    patch_by_id = {r["case_id"]: r for r in rows["patch"]}
    gaps = sorted(((abs(np.nanmean([f[f"dice_{r}"] - patch_by_id[f["case_id"]][f"dice_{r}"]
                                    for r in REGIONS])), f) for f in rows["full"]
                   if f["case_id"] in patch_by_id), key=lambda x: -x[0])
    drawn = []
    for _, f in gaps[:n]:
        cid, fold = f["case_id"], f["fold"]
        case = next(c for c in find_cases(out / "test" / f"fold{fold}").cases
                    if c.case_id == cid)
        seg = nib.load(case.seg)
        maps = [labels_to_regions(np.asarray(seg.dataobj), case.convention)]
        for mode in MODES:
            img = nib.load(out / "pred" / mode / f"fold{fold}" / f"{cid}.nii.gz")
            maps.append(labels_to_regions(np.asarray(img.dataobj), case.convention))
        classes = [report.label_classes(m) for m in maps]
        axis = next((i for i, c in enumerate(nib.aff2axcodes(seg.affine)) if c in "SI"), 2)
        # the slice where the modes disagree most, counting the truth tumor too so that
        # the tumor stays in view
        other = tuple(a for a in range(3) if a != axis)
        k = int(((classes[1] != classes[2]).sum(axis=other)
                 + (classes[0] > 0).sum(axis=other)).argmax())
        p = patch_by_id[cid]
        report.overlay(flair_volume(case), classes[0], classes[1], out / "overlays" / f"{cid}.png",
                       axis=axis, slice_index=k, extra=[classes[2]],
                       panels=("truth", f"full volumes (Dice WT {f['dice_WT']:.2f})",
                               f"patches (Dice WT {p['dice_WT']:.2f})"),
                       title=f"{cid}, fold {fold}")
        drawn.append(cid)
    return drawn


def write_outputs(out: Path, records: dict[str, list[dict[str, Any]]],
                  settings: dict[str, Any], *, command: str, wall_s: float,
                  overlays: int) -> dict[str, Any]:
    rows = _case_rows(out, records)
    full_by_id = {r["case_id"]: r for r in rows["full"]}
    common = [r for r in rows["patch"] if r["case_id"] in full_by_id]
    diffs = {m: {reg: paired([full_by_id[r["case_id"]][f"{m}_{reg}"] for r in common],
                             [r[f"{m}_{reg}"] for r in common], [r["fold"] for r in common],
                             higher_is_better=(m != "hd95_mm"))
                 for reg in REGIONS} for m in METRICS}
    summary = {
        "experiment": "full-vs-patch", "command": command, "wall_s": wall_s,
        "settings": settings, "environment": environment(),
        "modes": {m: report.summarize(rows[m]) for m in MODES},
        "paired_full_minus_patch": diffs,
        "per_fold": [{"fold": rf["fold"], "test_cases": rf["split"]["test"],
                      "full_dice": rf["summary"]["dice"], "patch_dice": rp["summary"]["dice"]}
                     for rf, rp in zip(records["full"], records["patch"], strict=True)],
        "time": _timing(records), "paper": PAPER,
    }
    report.write_per_case_csv(out / "per_case.csv",
                              [{**r, "mode": m} for m in MODES for r in rows[m]],
                              extra=("mode", "fold"))
    report.boxplot({m: {reg: [r[f"dice_{reg}"] for r in rows[m]] for reg in REGIONS}
                    for m in MODES}, out / "boxplot_dice.png",
                   title=f"Dice per region, full volumes vs patches ({len(common)} test cases)")
    summary["overlays"] = _overlays(out, rows, overlays)
    learning_curves(out, records, out / "curves.png")
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", report_md(summary))
    return summary
