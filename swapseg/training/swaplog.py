"""Swap statistics of a training run: the first step, the average step, per epoch.

The training loop holds one swap context per epoch; the engine's counters are cumulative
over it. A step's figures are the differences of ``SwapStats.as_dict()`` taken before and
after it; ``peak_saved_bytes`` (the saved bytes resident at the engine's peak, the name
the planner's prediction and plan.json use) is the running peak of the context at the end
of the step (the engine keeps no per-step peak), which for a static graph is the step's
own peak.
This module keeps the first step whole (with its per-scope table), averages the numeric
fields per epoch and over the run, writes them to ``swap_stats.json`` and gives the
per-epoch averages that go into log.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swapseg.io import write_json
from swapseg.offload.timeline import plot_timeline

__all__ = ["SwapLog", "write_trace", "LOG_FIELDS"]

#: SwapStats fields copied into log.csv as ``swap_<name>`` (per-step averages).
LOG_FIELDS = ("swapped", "bytes_out", "peak_saved_bytes", "wait_s")


class _Mean:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, d: dict[str, Any]) -> None:
        self.n += 1
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def mean(self) -> dict[str, float]:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else {}


class SwapLog:
    """Collects ``stats.as_dict()`` of every training step."""

    def __init__(self, policy: Any) -> None:
        self.policy = None if policy is None else policy.to_dict()
        self.first_step: dict[str, Any] | None = None
        self.run = _Mean()
        self.epochs: dict[int, _Mean] = {}

    def add_step(self, before: dict[str, Any], after: dict[str, Any], epoch: int) -> None:
        d = step_delta(before, after)
        if self.first_step is None:
            self.first_step = d
        self.run.add(d)
        self.epochs.setdefault(epoch, _Mean()).add(d)

    def epoch_columns(self, epoch: int) -> dict[str, float]:
        mean = self.epochs.get(epoch, _Mean()).mean()
        return {f"swap_{k}": mean.get(k, 0.0) for k in LOG_FIELDS}

    def write(self, path: str | Path) -> None:
        write_json(path, {
            "policy": self.policy,
            "first_step": self.first_step,
            "average_step": self.run.mean(),
            "steps": self.run.n,
            "per_epoch_average_step": {str(e + 1): m.mean() for e, m in self.epochs.items()},
        })


#: Fields that are levels or peaks, not counters: a step reports the value after it.
_LEVELS = ("device_bytes", "peak_saved_bytes")
#: The engine's names that the run record spells the planner's way (the engine's
#: ``peak_device_bytes`` is being renamed ``peak_saved_bytes`` itself).
_RECORD_NAMES = {"peak_device_bytes": "peak_saved_bytes"}


def step_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One step's figures from two snapshots of the cumulative counters."""
    out: dict[str, Any] = {}
    before = {_RECORD_NAMES.get(k, k): v for k, v in before.items()}
    after = {_RECORD_NAMES.get(k, k): v for k, v in after.items()}
    for k, v in after.items():
        if k == "by_scope":
            continue
        if k in _LEVELS or not isinstance(v, (int, float)) or isinstance(v, bool):
            out[k] = v
        else:
            out[k] = v - before.get(k, 0)
    scopes_before = before.get("by_scope", {})
    out["by_scope"] = {
        name: {f: c - scopes_before.get(name, {}).get(f, 0) for f, c in sc.items()}
        for name, sc in after.get("by_scope", {}).items()}
    return out


def write_trace(stats: Any, run_dir: Path, step: int) -> None:
    """RUN/timeline.json and RUN/timeline.png of the traced training step ``step``: the
    engine's events numbered with its step counter at the end of the step."""
    events = [e for e in stats.events if e["step"] == stats.steps]
    write_json(run_dir / "timeline.json", {"step": step, "engine_step": stats.steps,
                                           "stats": stats.as_dict(), "events": events})
    if events:  # an auto plan may swap nothing: then there is no timeline to draw
        plot_timeline(events, run_dir / "timeline.png",
                      title=f"swap timeline, training step {step} (0-based)")
