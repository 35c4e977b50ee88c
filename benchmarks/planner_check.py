"""Check the planner's simulator against real CPU steps of the Isensee U-Net (issue 5).

Memory (deterministic, so valid even on a loaded machine):
- no swapping at each side: predicted peak vs the profiler's allocation peak of a real
  steady-state step (Adam state present, grads set to None) plus parameters and Adam state;
- three swap policies: predicted resident saved bytes vs the engine's accounted
  ``peak_device_bytes`` (copies inline, ``workers=0``, so modelled as an instant link).
Time (needs a quiet machine): the ``local`` profile is calibrated with one real step at
``--calibrate`` (default 64^3) and predicts the median of ``--steps`` steps at each side.

The clock check (``--clock``, issue 13): the profile is calibrated with one profiled step
at each of ``--calibrate`` sides (per-op conv rates, everything else fitted), its disk
tier probed through its transport and then fitted from one disk-tier step per side
(``calibrate_tier``), and then predicts the median of
``--steps`` steps (after one warm-up) of no swapping, the disk tier (swap all, prefetch 4)
and recompute-speed at each side; memory rows are skipped. Writes the profile next to
the result (``*-profile.json``) for ``swapseg bench largest --profile``.

    python benchmarks/planner_check.py --out benchmarks/results/planner_check.json
    python benchmarks/planner_check.py --clock --calibrate 64 96 128 --sides 64 96 128 \
        --out benchmarks/results/planner-clock.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time

import torch

from swapseg.envinfo import environment
from swapseg.experiments.methods_bench import dice_loss
from swapseg.io import write_json
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import apply_plan
from swapseg.offload.engine import swap_activations
from swapseg.offload.measure import profiled_peak_bytes, train_step
from swapseg.offload.policy import MemoryPlan, RecomputePolicy, SwapPolicy
from swapseg.planner.calibrate import calibrate, calibrate_step, calibrate_tier, calibrated
from swapseg.planner.local import measure_local
from swapseg.planner.simulate import simulate
from swapseg.planner.trace import trace_step

POLICIES = {"config-1 (all, lb 1)": SwapPolicy(prefetch=1),
            "config-4 (exclude decoder, lb 20)": SwapPolicy(exclude=("decoder.*",), prefetch=20),
            "first 100, lb 4": SwapPolicy(n_tensors=100, prefetch=4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--calibrate", type=int, nargs="+", default=[64])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--clock", action="store_true",
                    help="time check of none / disk tier / recompute-speed only")
    ap.add_argument("--out", default="benchmarks/results/planner_check.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.clock:
        clock_check(a)
        return
    a.calibrate = a.calibrate[0]
    model = Isensee3DUNet()
    local = measure_local(model, calibrate_shape=(1, 4, a.calibrate, a.calibrate, a.calibrate))
    instant = dataclasses.replace(local, d2h_bytes_per_s=1e30, h2d_bytes_per_s=1e30)
    opt = torch.optim.Adam(model.parameters())
    rows = []
    for side in a.sides:
        x = torch.randn(1, 4, side, side, side)
        tr = trace_step(model, x.shape)

        def step(x: torch.Tensor = x) -> None:
            train_step(model, x, opt=opt)

        times = []
        for _ in range(1 + a.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        measured = 3 * sum(p.numel() * 4 for p in model.parameters()) + profiled_peak_bytes(step)
        r = simulate(tr, local)
        rows.append({"side": side, "what": "no swap: peak bytes", "measured": measured,
                     "predicted": r.peak_bytes, "error": r.peak_bytes / measured - 1})
        med = statistics.median(times[1:])
        rows.append({"side": side, "what": "no swap: step s", "measured": med,
                     "predicted": r.step_s, "error": r.step_s / med - 1, "all_s": times})
        for name, pol in POLICIES.items():
            with swap_activations(model, pol, workers=0) as st:
                train_step(model, x)
            model.zero_grad(set_to_none=True)
            p = simulate(tr, instant, pol).peak_saved_bytes
            rows.append({"side": side, "what": f"{name}: resident saved bytes",
                         "measured": st.peak_device_bytes, "predicted": p,
                         "error": p / st.peak_device_bytes - 1})
        for row in rows[-5:]:
            print(f"{row['side']:>4} {row['what']:<48} measured {row['measured']:>14.4g} "
                  f"predicted {row['predicted']:>14.4g} error {row['error']:+.1%}", flush=True)
    write_json(a.out, {"environment": environment(), "local_profile": local.to_dict(),
                       "calibrate_side": a.calibrate, "rows": rows})


CLOCK_PLANS = {"none": MemoryPlan(name="none"),
               "disk tier (swap all, lb 4)": MemoryPlan(SwapPolicy(tier="disk", prefetch=4)),
               "recompute-speed": MemoryPlan(None, RecomputePolicy(("*",), "speed"))}


def clock_check(a: argparse.Namespace) -> None:
    """Per side: one profiled calibration step, then the methods' steps round robin (one
    step of each in turn), so a side's calibration and its measurements share the load;
    predictions from the profile calibrated on all sides."""
    model = Isensee3DUNet()
    load0 = os.getloadavg()
    base = measure_local(model, tier="disk")
    calib, measured = [], {}
    for side in a.calibrate if a.calibrate == a.sides else []:
        shape = (1, 4, side, side, side)
        c = calibrate_step(model, shape, dice_loss)
        calib.append({**c, "shape": list(shape), "load": os.getloadavg()})
        measured[side] = _round_robin(model, shape, a.steps)
        print(f"{side:>4} calibrated and measured, load {os.getloadavg()[0]:.1f}", flush=True)
    if not calib:  # separate calibration sides: calibrate first
        calib = calibrate(base, model, [(1, 4, s, s, s) for s in a.calibrate], dice_loss)[1]
        measured = {s: _round_robin(model, (1, 4, s, s, s), a.steps) for s in a.sides}
    local = calibrated(base, calib)
    # the disk tier's costs beyond its probes, from a disk-tier step at each calibration side
    local, tier_steps = calibrate_tier(local, model, [(1, 4, s, s, s) for s in a.calibrate],
                                       dice_loss)
    write_json(a.out.replace(".json", "-profile.json"), local.to_dict())
    rows = []
    for side in a.sides:
        tr = trace_step(model, (1, 4, side, side, side), dice_loss)
        for name, plan in CLOCK_PLANS.items():
            times = measured[side][name]
            med = statistics.median(times)
            p = simulate(tr, local, plan.swap, plan.recompute)
            rows.append({"side": side, "what": f"{name}: step s", "measured": med,
                         "predicted": p.step_s, "error": p.step_s / med - 1, "all_s": times})
            print(f"{side:>4} {name:<30} measured {med:8.2f} s predicted "
                  f"{p.step_s:8.2f} s error {rows[-1]['error']:+.1%}", flush=True)
    write_json(a.out, {"environment": environment(), "local_profile": local.to_dict(),
                       "calibrate_sides": a.calibrate, "calibration_steps": calib,
                       "tier_calibration_steps": tier_steps,
                       "load_before": load0, "load_after": os.getloadavg(), "rows": rows})


def _round_robin(model: torch.nn.Module, shape: tuple[int, ...], steps: int
                 ) -> dict[str, list[float]]:
    """Warm-up, then ``steps`` timed steps of each plan in turn; seconds per plan."""
    runs = {n: (copy.deepcopy(model), p) for n, p in CLOCK_PLANS.items()}
    opts = {n: torch.optim.Adam(m.parameters()) for n, (m, _) in runs.items()}
    x = torch.randn(shape)
    out: dict[str, list[float]] = {n: [] for n in runs}
    for i in range(1 + steps):
        for n, (m, plan) in runs.items():
            t0 = time.perf_counter()
            with apply_plan(m, plan):
                train_step(m, x, dice_loss, opt=opts[n])
            if i:
                out[n].append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
