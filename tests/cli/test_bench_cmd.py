"""`swapseg bench` and `bench largest`: progress lines on stderr, and --no-progress."""

from __future__ import annotations

import json

import pytest

from swapseg.cli import main
from swapseg.experiments import largest as L

#: The cheapest `bench largest`: a 3-level U-Net with 4 filters, two sides, probes faked
#: (the search, its progress lines and its files are the real ones).
LARGEST = ["bench", "largest", "--cap", "1GiB", "--methods", "none", "--sides", "8,12",
           "--model-kwargs", json.dumps({"base_filters": 4, "depth": 3}),
           "--profile", "p100-nvlink"]


@pytest.fixture
def fake_probes(monkeypatch):
    calls: list[int] = []

    def probe(side, plan, cap, **kw):
        calls.append(side)
        return L.Probe(side, "fits" if side <= 8 else "oom", 0.5, 10**8, 0.25,
                       plan=plan.name)

    monkeypatch.setattr(L, "run_probe", probe)
    return calls


@pytest.mark.parametrize("quiet", [False, True])
def test_bench_largest_no_progress_drops_the_progress_lines(quiet, fake_probes, tmp_path,
                                                            capsys):
    out = tmp_path / "big"
    argv = [*LARGEST, "--out", str(out)] + (["--no-progress"] if quiet else [])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert fake_probes  # the search ran either way
    assert json.loads((out / "largest.json").read_text())["methods"]["none"][
        "largest_side"] == 8
    lines = [ln for ln in err.splitlines() if ln.startswith("largest: ")]
    if quiet:
        assert err == ""
    else:
        assert any("none side 8: probing" in ln for ln in lines), err
        assert any("planner predicts largest side" in ln for ln in lines), err


@pytest.mark.parametrize("quiet", [False, True])
def test_bench_methods_no_progress_passes_no_callback(quiet, tmp_path, monkeypatch, capsys):
    import swapseg.experiments.methods_bench as mb

    def fake_bench(shape, budget, steps, warmup, profile_peak, cap, cap_device, sides,
                   progress=None, **kw):
        if progress:
            progress("step 1/2: none")
        return {"environment": {"cpu": "cpu", "torch_threads": 1, "torch": "t"},
                "shape": list(shape), "steps": steps, "warmup": warmup, "methods": {},
                "largest_side": {"sides": {}, "how": "h", "cap_bytes": cap, "device": "cpu"}}

    monkeypatch.setattr(mb, "run_bench", fake_bench)
    argv = ["bench", "--quick", "--out", str(tmp_path / "b")] + (["--no-progress"] if quiet
                                                                  else [])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err == ("" if quiet else "bench: step 1/2: none\n")
    assert (tmp_path / "b" / "bench.json").is_file()
