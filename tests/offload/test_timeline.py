"""Traced events and the timeline plot."""

from __future__ import annotations

import json

import torch
from _swap_models import isensee

from swapseg.offload import SwapPolicy, plot_timeline, swap_activations
from swapseg.offload.timeline import copy_intervals, select_step


def test_trace_events_and_plot(tmp_path):
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    with swap_activations(model, SwapPolicy(prefetch=2), trace=True) as st:
        model(x).square().mean().backward()
        in_1, swapped_1 = st.bytes_in, st.swapped
        model(x).square().mean().backward()
    kinds = {e["kind"] for e in st.events}
    assert {"pack", "out_start", "out_end", "prefetch", "in_start", "in_end", "unpack",
            "free", "backward_start", "backward_end", "release"} <= kinds
    json.dumps(st.events)  # JSON-able as it is
    last = select_step(st.events)
    assert {e["step"] for e in last} == {2}
    outs = copy_intervals(last, "out_start", "out_end")
    assert len(outs) == st.swapped - swapped_1 and all(b >= a for a, b, _ in outs)
    ins = copy_intervals(last, "in_start", "in_end")
    assert 0 < sum(n for _, _, n in ins) <= st.bytes_in - in_1
    assert all(e["resident_bytes"] >= 0 for e in st.events if "resident_bytes" in e)
    assert any("resident_bytes" in e for e in st.events)
    png = plot_timeline(st.events, tmp_path / "timeline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_trace_no_events():
    model = isensee()
    with swap_activations(model, SwapPolicy()) as st:
        model(torch.randn(1, 2, 16, 16, 16)).sum().backward()
    assert st.events == []
