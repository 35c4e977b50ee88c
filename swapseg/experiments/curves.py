"""Learning curves of the full-vs-patch experiment: validation against training time.

Equal epochs are not equal work: a patch epoch takes more optimizer steps and more seconds
than a full-volume epoch. Drawing each run's validation loss and Dice against its cumulative
training seconds shows which mode reaches a given quality sooner, and whether either had
converged when it stopped (early stopping, the epoch cap or ``--time-limit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swapseg.plotting import pyplot, save_png
from swapseg.training.runlog import read_log

__all__ = ["read_curve", "learning_curves"]

MODES = ("full", "patch")


def read_curve(log_csv: str | Path) -> dict[str, list[float]]:
    """One run's ``log.csv`` as columns: cumulative training seconds at the end of each
    epoch (``t_s``), validation loss, the mean validation Dice over WT/TC/ET, and the
    running optimizer-step count."""
    t = steps = 0.0
    out: dict[str, list[float]] = {"epoch": [], "t_s": [], "val_loss": [], "val_dice": [],
                                   "steps": [], "best": []}
    for r in read_log(log_csv):
        t += float(r["epoch_s"])
        steps += float(r["steps"])
        dice = [float(r[f"val_dice_{k}"]) for k in ("WT", "TC", "ET")]
        out["epoch"].append(float(r["epoch"]))
        out["t_s"].append(t)
        out["val_loss"].append(float(r["val_loss"]))
        out["val_dice"].append(sum(dice) / 3)
        out["steps"].append(steps)
        out["best"].append(float(r["best"]))
    return out


def learning_curves(out: Path, records: dict[str, list[dict[str, Any]]],
                    path: Path) -> Path:
    """Validation loss and mean Dice against training minutes, one colour per mode and one
    line style per fold; the best epoch of each run (its checkpoint) is marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    for m, mode in enumerate(MODES):
        for k, rec in enumerate(records.get(mode, [])):
            log = out / mode / f"fold{rec['fold']}" / "log.csv"
            if not log.is_file():
                continue
            c = read_curve(log)
            minutes = [t / 60 for t in c["t_s"]]
            best = rec["best_epoch"] - 1
            for ax, key in zip(axes, ("val_loss", "val_dice"), strict=True):
                ax.plot(minutes, c[key], styles[k % len(styles)], color=palette[m],
                        lw=1.2, label=f"{mode}, fold {rec['fold']}")
                if 0 <= best < len(minutes):
                    ax.plot(minutes[best], c[key][best], "o", color=palette[m], ms=4)
    for ax, label in zip(axes, ("validation loss (soft Dice)", "validation Dice, mean of "
                                                               "WT/TC/ET"), strict=True):
        ax.set_xlabel("training time (min)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Learning curves (dots: best epoch, the checkpoint that was tested)")
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    return path
