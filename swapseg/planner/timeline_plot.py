"""Plot what the planner simulated: timelines (compute and copy lanes with the memory
curve, paper Fig. 2) and the Pareto front of every plan it evaluated."""

from __future__ import annotations

import os
from typing import Any

from swapseg.offload.figure import pyplot, save_png

__all__ = ["plot_timelines", "plot_pareto"]


def _lanes(ax: Any, tl: dict[str, Any]) -> None:
    starts, ends, phase = tl["op_start_s"], tl["op_end_s"], tl["phase"]
    color = {"fwd": "tab:blue", "bwd": "tab:orange"}
    for p in ("fwd", "bwd"):
        bars = [(s, e - s) for s, e, ph in zip(starts, ends, phase, strict=True) if ph == p]
        ax.broken_barh(bars, (2.6, 0.8), color=color[p], label=f"compute ({p})")
    ax.broken_barh([(a, b - a) for a, b in tl["stalls_s"]], (2.6, 0.8), color="red",
                   label="stall")
    ax.broken_barh([(a, b - a) for a, b in tl.get("recompute_s_intervals", [])], (2.6, 0.8),
                   color="gold", label="recompute")
    ax.broken_barh([(a, b - a) for a, b in tl["copy_out_s"]], (1.6, 0.8), color="tab:green",
                   label="swap-out")
    ax.broken_barh([(a, b - a) for a, b in tl["copy_in_s"]], (0.6, 0.8), color="tab:purple",
                   label="swap-in")
    ax.set_yticks([1, 2, 3], ["copy in", "copy out", "compute"])
    ax.set_ylim(0.4, 3.6)


def plot_timelines(panels: list[tuple[str, dict[str, Any]]], path: str | os.PathLike[str],
                   budget_bytes: int | None = None) -> None:
    """One row per (title, timeline) pair: lanes on top, device memory below."""
    plt = pyplot()

    n = len(panels)
    fig, axes = plt.subplots(2 * n, 1, figsize=(11, 2.6 * n + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1] * n})
    t_max = max(tl["op_end_s"][-1] for _, tl in panels)
    for k, (title, tl) in enumerate(panels):
        ax, am = axes[2 * k, 0], axes[2 * k + 1, 0]
        _lanes(ax, tl)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlim(0, t_max)
        ax.axvline(tl["fwd_end_s"], color="k", lw=0.6, ls=":")
        gib = [b / 2**30 for b in tl["memory_bytes"]]
        am.step(tl["op_start_s"], gib, where="post", color="k", lw=0.8, label="device memory")
        am.step(tl["op_start_s"], [b / 2**30 for b in tl["saved_bytes"]], where="post",
                color="tab:gray", lw=0.6, label="saved tensors resident")
        if budget_bytes:
            am.axhline(budget_bytes / 2**30, color="red", lw=0.6, ls="--", label="budget")
        am.set_xlim(0, t_max)
        am.set_ylabel("GiB")
        if k == 0:
            handles = ax.get_legend_handles_labels()[0] + am.get_legend_handles_labels()[0]
            fig.legend(handles=handles, fontsize=7, ncol=5, loc="upper center")
    axes[-1, 0].set_xlabel("simulated time in one training step (s)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.6 * n + 0.5)))
    save_png(fig, path)


def _family(name: str) -> str:
    """A candidate's family for the legend: the start of its name."""
    for prefix in ("keep-all", "swap-all", "first-", "exclude-", "only-", "recompute-",
                   "hybrid-", "per-storage-", "paper-config-"):
        if name.startswith(prefix):
            return prefix.rstrip("-")
    return "other"


def plot_pareto(points: list[tuple[str, int, float]], front: list[str], chosen: str | None,
                path: str | os.PathLike[str], budget_bytes: int,
                usable_bytes: int | None = None) -> None:
    """Predicted peak against predicted step time of every evaluated plan
    (``(name, peak_bytes, step_s)``), the front (names, by peak) drawn as a line, the
    budget (and its usable part) as vertical lines, the chosen plan marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_family: dict[str, list[tuple[float, float]]] = {}
    for name, peak, step in points:
        by_family.setdefault(_family(name), []).append((peak / 2**30, step))
    for fam, xy in sorted(by_family.items()):
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=14, alpha=0.7, label=fam)
    at = {name: (peak / 2**30, step) for name, peak, step in points}
    fx = [at[n] for n in front if n in at]
    ax.step([x for x, _ in fx], [y for _, y in fx], where="post", color="k", lw=1.0,
            label="Pareto front")
    ax.axvline(budget_bytes / 2**30, color="red", lw=0.8, ls="--", label="budget")
    if usable_bytes is not None:
        ax.axvline(usable_bytes / 2**30, color="red", lw=0.6, ls=":", label="usable")
    if chosen in at:
        ax.scatter(*at[chosen], s=140, facecolors="none", edgecolors="red", lw=1.6,
                   label=f"chosen: {chosen[:40]}", zorder=5)
    ax.set_xlabel("predicted peak device memory (GiB)")
    ax.set_ylabel("predicted step time (s)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_png(fig, path)
