"""Swap statistics of a training run: the first step, the average step, per epoch.

The engine yields one stats object per step (``SwapStats.as_dict()``). This module keeps
the first step's dict whole (with its per-scope table) and averages the numeric fields
per epoch and over the run, writes them to ``swap_stats.json`` and gives the per-epoch
averages that go into log.csv.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from swapseg.io import write_json

__all__ = ["SwapLog", "write_trace", "LOG_FIELDS"]

#: SwapStats fields copied into log.csv as ``swap_<name>`` (per-step averages).
LOG_FIELDS = ("swapped", "bytes_out", "peak_device_bytes", "wait_s")


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

    def add_step(self, stats: Any, epoch: int) -> None:
        d = stats.as_dict()
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


def _event_dict(e: Any) -> Any:
    if hasattr(e, "as_dict"):
        return e.as_dict()
    if dataclasses.is_dataclass(e):
        return dataclasses.asdict(e)
    return e


def write_trace(stats: Any, run_dir: Path, step: int) -> None:
    """RUN/timeline.json and RUN/timeline.png of a traced step."""
    from swapseg.offload import plot_timeline

    events = list(getattr(stats, "events", []) or [])
    write_json(run_dir / "timeline.json",
               {"step": step, "stats": stats.as_dict(), "events": [_event_dict(e) for e in events]})
    plot_timeline(events, run_dir / "timeline.png")
