"""Plot a traced step: compute and copy lanes over time, resident saved bytes under them.

The measured counterpart of the paper's Fig. 2. Events come from
``swap_activations(..., trace=True)`` (``stats.events``), each a dict with ``t`` (seconds
since the context opened), ``kind`` and ``step``, engine events with ``resident_bytes``
(the engine's resident saved bytes just after the event), and per-tensor events with
``id``, ``bytes``, ``scope``. Kinds:

- ``step_start``, ``backward_start``, ``backward_end``: phase marks;
- ``pack`` (a new saved storage; ``swap`` says whether it moves), ``dedup``;
- ``out_start`` / ``out_end``: the copy-out as the transport ran it (on CUDA, device
  times from events); no ``resident_bytes``, since they may be recorded after the fact;
- ``prefetch`` (copy-in issued ahead of use) / ``demand`` (issued at its unpack);
- ``in_start`` / ``in_end``: the copy-in as the transport ran it (likewise);
- ``wait`` (``dur_s`` the consumer stalled on a copy-in, ending at ``t``; on CUDA the
  compute stream's stall), ``unpack``, ``free`` (the engine dropped its
  device copy), ``release`` (autograd freed the last handle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swapseg.offload.figure import pyplot, save_png

__all__ = ["plot_timeline", "select_step", "copy_intervals"]

_LANES = ("compute", "copy out", "copy in")


def select_step(events: Sequence[dict[str, Any]], step: int | None = None
                ) -> list[dict[str, Any]]:
    """Events of ``step`` (default: the last step that reached ``backward_end``)."""
    if step is None:
        done = [e["step"] for e in events if e["kind"] == "backward_end"]
        step = done[-1] if done else max((e.get("step", 0) for e in events), default=0)
    return sorted((e for e in events if e.get("step") == step), key=lambda e: e["t"])


def copy_intervals(events: Sequence[dict[str, Any]], start: str, end: str
                   ) -> list[tuple[float, float, int]]:
    """(start s, end s, bytes) of each copy, pairing ``start``/``end`` events by id."""
    opened: dict[int, dict[str, Any]] = {}
    out = []
    for e in sorted(events, key=lambda e: e["t"]):
        if e["kind"] == start:
            opened[e["id"]] = e
        elif e["kind"] == end and e["id"] in opened:
            s = opened.pop(e["id"])
            out.append((s["t"], e["t"], e.get("bytes", 0)))
    return out


def plot_timeline(events: Sequence[dict[str, Any]], path: str | Path,
                  step: int | None = None, title: str | None = None) -> Path:
    """Draw one step of ``events`` to ``path`` (PNG); returns the path.

    Top: three lanes (compute: pack and unpack ticks, waits in red; copy out; copy in),
    bars for each copy. Bottom: the engine's resident saved bytes over time.
    """
    plt = pyplot()

    ev = select_step(events, step)
    if not ev:
        raise ValueError("no events to plot (was the context opened with trace=True?)")
    t0 = ev[0]["t"]
    fig, (ax, axm) = plt.subplots(2, 1, figsize=(11, 5), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    lane = {name: i for i, name in enumerate(_LANES)}
    packs = [e["t"] - t0 for e in ev if e["kind"] == "pack"]
    unpacks = [e["t"] - t0 for e in ev if e["kind"] == "unpack"]
    ax.vlines(packs, lane["compute"] - 0.3, lane["compute"] + 0.3, color="tab:blue", lw=0.6,
              label="pack")
    ax.vlines(unpacks, lane["compute"] - 0.3, lane["compute"] + 0.3, color="tab:green",
              lw=0.6, label="unpack")
    waits = [(e["t"] - t0 - e["dur_s"], e["dur_s"]) for e in ev if e["kind"] == "wait"]
    ax.broken_barh(waits, (lane["compute"] - 0.35, 0.7), color="tab:red", label="wait")
    for name, (a, b), color in (("copy out", ("out_start", "out_end"), "tab:orange"),
                                ("copy in", ("in_start", "in_end"), "tab:purple")):
        bars = [(s - t0, max(e - s, 1e-6)) for s, e, _ in copy_intervals(ev, a, b)]
        ax.broken_barh(bars, (lane[name] - 0.3, 0.6), color=color, label=name)
    for e in ev:
        if e["kind"] in ("backward_start", "backward_end"):
            for a in (ax, axm):
                a.axvline(e["t"] - t0, color="gray", ls="--", lw=0.8)
    ax.set_yticks(range(len(_LANES)), _LANES)
    ax.legend(loc="upper right", fontsize=7, ncol=5)
    ax.set_title(title or f"swap timeline, step {ev[0].get('step', '?')}")
    levels = [e for e in ev if "resident_bytes" in e]
    ts = [e["t"] - t0 for e in levels]
    mib = [e["resident_bytes"] / 2**20 for e in levels]
    axm.step(ts, mib, where="post", color="black", lw=1)
    axm.set_ylabel("resident saved MiB")
    axm.set_xlabel("seconds from the step's first event")
    fig.tight_layout()
    path = Path(path)
    save_png(fig, path)
    return path
