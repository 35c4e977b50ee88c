"""Swap statistics of a training run: the first step, the average step, per epoch.

The training loop holds one ``OffloadEngine`` for the run; a step's figures are the
engine's ``stats.last_step`` (its counters, its own peak). This module keeps the first
step whole (with its per-scope table), averages the numeric fields per epoch and over the
run, writes them to ``swap_stats.json`` and gives the
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

    def add_step(self, d: dict[str, Any], epoch: int) -> None:
        """One step's own figures (``SwapStats.last_step.as_dict()``)."""
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


def write_trace(stats: Any, window: tuple[float, float], run_dir: Path, step: int) -> None:
    """RUN/timeline.json and RUN/timeline.png of the traced training step ``step``: the
    engine's events numbered with its forward count at the end of the step (the run's
    engine counts forwards from 1); ``window`` is the step's (start, end) in the engine's
    clock (seconds since ``stats.t0``), recorded beside them."""
    engine_step = stats.forwards
    events = [e for e in stats.events if e["step"] == engine_step]
    write_json(run_dir / "timeline.json", {"step": step, "engine_step": engine_step,
                                           "window_s": list(window),
                                           "stats": stats.as_dict(), "events": events})
    if events:  # an auto plan may swap nothing: then there is no timeline to draw
        plot_timeline(events, run_dir / "timeline.png",
                      title=f"swap timeline, training step {step} (0-based)")
