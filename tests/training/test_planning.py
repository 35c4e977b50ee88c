"""The run's memory plan: prediction, the fit check, the disk check, the plan line."""

from __future__ import annotations

import json

import pytest
import torch

from swapseg.devices import AVAILABLE_ENV
from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan, RecomputePolicy, SwapPolicy
from swapseg.training import planning
from swapseg.training.config import tiny
from swapseg.training.model import build_model

CPU = torch.device("cpu")


def _pred(**changes) -> planning.Prediction:
    base = dict(peak_bytes=3 * 2**20, peak_saved_bytes=2**20, step_s=2.0, baseline_step_s=1.6,
                swapped_tensors=12, swapped_bytes=5 * 2**20, recomputed_tensors=0,
                input_shape=(1, 4, 16, 16, 16), profile="test")
    return planning.Prediction(**{**base, **changes})


def test_prediction_follows_the_plan():
    cfg = tiny()
    model = build_model(cfg)
    keep = planning.predict(cfg, model, None, CPU)
    swap = planning.predict(cfg, model, MemoryPlan(swap=SwapPolicy()), CPU)
    assert keep.input_shape == (1, 4, 16, 16, 16) and keep.swapped_tensors == 0
    assert swap.swapped_tensors > 0 and swap.peak_saved_bytes < keep.peak_saved_bytes
    assert keep.step_s == keep.baseline_step_s == swap.baseline_step_s
    bf16 = planning.predict(cfg.replace(precision="bf16-mixed"), model, None, CPU)
    assert bf16.peak_saved_bytes < keep.peak_saved_bytes  # 16-bit activations
    patch = cfg.replace(mode="patch", patch=8)
    assert planning.predict(patch, model, None, CPU).input_shape == (2, 4, 8, 8, 8)


def test_fit_check_refuses_in_one_line_and_names_the_ways_out(monkeypatch):
    monkeypatch.setenv(AVAILABLE_ENV, "3MiB")
    cfg = tiny(workers=0)
    data = planning.data_bytes(cfg)
    assert data == 7 * 4 * 16**3  # one batch of 4 + 3 float32 channels
    with pytest.raises(InputError) as err:
        planning.check_fits(cfg, _pred(), CPU, 3, echo=print)
    msg = str(err.value)
    assert "\n" not in msg and str(3 * 2**20 + data) in msg
    assert "--shape" in msg and "--zoom" in msg and "--swap auto --memory-budget" in msg
    # 10% of what is free stays free: a peak just under 90% of it fits
    monkeypatch.setenv(AVAILABLE_ENV, f"{int((3 * 2**20 + data) / 0.9) + 1}B")
    lines = []
    planning.check_fits(cfg, _pred(), CPU, 3, echo=lines.append)
    assert lines and "6 s per epoch of 3 steps" in lines[0]
    assert not lines[0].startswith("warning")


def test_slow_epochs_are_a_warning():
    lines = []
    planning.check_fits(tiny(), _pred(step_s=700.0), CPU, 1, echo=lines.append)
    assert lines[0].startswith("warning: predicted on this CPU") and "12 min per epoch" in lines[0]


def test_disk_check_warns_when_the_folder_is_short(tmp_path):
    plan = MemoryPlan(swap=SwapPolicy(tier="disk", disk_dir=str(tmp_path / "new")))
    lines = []
    assert planning.check_disk(plan, _pred(), echo=lines.append) == 0 and not lines
    huge = _pred(swapped_bytes=2**62)  # more than any disk here
    short = planning.check_disk(plan, huge, echo=lines.append)
    assert short > 0 and len(lines) == 1 and str(tmp_path) in lines[0]
    assert f"{short} bytes" in lines[0]
    host = MemoryPlan(swap=SwapPolicy(tier="host"))
    assert planning.check_disk(host, huge, echo=lines.append) == 0 and len(lines) == 1


def test_plan_line_is_one_readable_line():
    plan = MemoryPlan(swap=SwapPolicy(tier="host", prefetch=20, exclude=("decoder.*",)),
                      recompute=RecomputePolicy(scopes=("decoder.0",), mode="speed"),
                      name="hybrid-x")
    line = planning.plan_line(plan, _pred(), 4 * 2**20)
    assert line == ("plan: hybrid-x — swap 12 tensors, 5.00 MiB (host, prefetch 20, except "
                    "decoder.*); recompute decoder.0 (speed); predicted peak 3.00 MiB of "
                    "4.00 MiB budget, +25% step time")


def test_resolve_auto_reuses_its_plan_and_refuses_another(tmp_path):
    cfg = tiny()
    path = tmp_path / "plan.json"
    chosen, pred, record = planning.resolve_auto(cfg, 64 * 2**20, path, echo=lambda _: None)
    assert chosen.plan is not None and pred is not None and record["plan"] == chosen.plan.to_dict()
    path.write_text(json.dumps(record))
    again, pred2, rec2 = planning.resolve_auto(cfg, 64 * 2**20, path, echo=lambda _: None)
    assert again.plan == chosen.plan and pred2 is None and rec2 is None
    with pytest.raises(InputError, match="holds a plan for"):
        planning.resolve_auto(cfg, 32 * 2**20, path, echo=lambda _: None)
    # a budget read from the device changes from run to run: its plan is reused as it is
    kept, _, none = planning.resolve_auto(cfg, 32 * 2**20, path, echo=lambda _: None,
                                          budget_from="the device's available memory")
    assert kept.plan == chosen.plan and none is None
    # a resumed run given another budget is planned anew
    _, pred3, rec3 = planning.resolve_auto(cfg, 2**30, path, echo=lambda _: None, replan=True)
    assert pred3 is not None and rec3["budget_bytes"] == 2**30
    # on a CPU the chosen plan is concrete: it swaps to disk or not at all
    assert chosen.plan.swap is None or chosen.plan.swap.tier == "disk"


def test_swap_means_the_same_everywhere(tmp_path, monkeypatch):
    cuda = torch.device("cuda", 0)
    assert planning.swap_plan("none", None, CPU) == (None, None)
    every, none = planning.swap_plan("all", None, CPU)
    assert every.swap == SwapPolicy(tier="disk") and none is None
    assert planning.swap_plan("all", None, cuda)[0].swap.tier == "cuda"
    assert planning.swap_plan("auto", 2**30, CPU) == (None, 2**30)
    monkeypatch.setenv(AVAILABLE_ENV, "3GiB")  # no budget: the device's available memory
    assert planning.swap_plan("auto", None, CPU) == (None, 3 * 2**30)
    with pytest.raises(InputError, match="only used with --swap auto"):
        planning.swap_plan("all", 2**30, CPU)
    path = tmp_path / "p.json"
    path.write_text('{"prefetch": 3}')  # a bare policy, tier auto: disk on a CPU
    assert planning.swap_plan(str(path), None, CPU)[0].swap == SwapPolicy(prefetch=3,
                                                                          tier="disk")
    with pytest.raises(InputError, match="not none, all, auto or an existing"):
        planning.swap_plan(str(tmp_path / "nope.json"), None, CPU)


def test_a_run_plan_is_made_concrete_for_its_device():
    cfg = tiny(plan=MemoryPlan(swap=SwapPolicy(), name="swap-all"))
    assert planning.on_device(cfg, CPU).swap.tier == "disk"
    assert planning.on_device(cfg, torch.device("cuda", 0)).swap.tier == "cuda"
    assert planning.on_device(tiny(), CPU).plan is None


def test_measured_peak_is_added_to_the_record(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"plan": {}, "budget_bytes": 2**40,
                                "predicted": {"peak_bytes": 2**20, "peak_saved_bytes": 2**19},
                                "measured": []}))
    m = planning.measured_peak({"peak_saved_bytes": 4096, "swapped": 3}, CPU)
    assert m["peak_bytes"] > 0 and m["peak_source"] == "the process's peak RSS"
    # measured under the names the prediction uses
    assert {"peak_bytes", "peak_saved_bytes"} <= set(m) and m["swapped_tensors"] == 3
    line = planning.record_measured(path, {"fold": 0, **m})
    rec = json.loads(path.read_text())
    assert rec["measured"][0]["within_budget"] is True and rec["measured"][0]["fold"] == 0
    assert "predicted 1.00 MiB" in line and "4.00 KiB saved tensors" in line


def test_resolve_auto_traces_the_model_once_at_its_shape(tmp_path, monkeypatch):
    """The plan, its prediction and keep-all's come from one trace at the run's input
    shape (the local profile's calibration step runs at its own smaller shape)."""
    from swapseg.planner import choose, trace

    shapes = []
    real = trace.trace_step

    def counted(m, shape, *a, **k):
        shapes.append(tuple(shape))
        return real(m, shape, *a, **k)

    monkeypatch.setattr(choose, "trace_step", counted)  # the planner's own trace
    monkeypatch.setattr(trace, "trace_step", counted)   # any other caller's
    cfg = tiny(shape=(96, 80, 72))  # larger than the calibration step's shape
    chosen, pred, record = planning.resolve_auto(cfg, 2**31, tmp_path / "plan.json",
                                                 echo=lambda _: None)
    assert shapes.count(planning.input_shape(cfg)) == 1
    assert pred is not None and pred.input_shape == planning.input_shape(cfg)
    assert record["plan"] == chosen.plan.to_dict()
