"""The planner on third-party networks (issue 21 item 1): predicted vs measured peaks.

For each network of the zoo (MONAI and nnU-Net's dynamic_network_architectures, one 2-D
net), at a CPU shape where activations dominate: the trace's keep-all peak, then
``plan_memory`` at budgets of 0.8, 0.6 and 0.4 of it on one ``local`` profile (probes of
this machine, measured once). Each plan, and keep-all, runs three Adam steps under one
``OffloadEngine`` (built once, entered per step, as a training run does; the output held
through backward, as nnU-Net's loop does and the planner's trace assumes); each step's
peak is the profiler's allocation peak of forward + backward (gradients set to None
first) plus weights and Adam state, the planner's definition. With ``--rss`` each
plan also runs in a fresh process: its peak RSS over the steps less its RSS once the
model is built (the imports, MONAI's included, are not the step's).
Writes a JSON and a markdown table.

    python benchmarks/planner_zoo.py --quick --out benchmarks/results/zoo-quick
    python benchmarks/planner_zoo.py --rss --out benchmarks/results/2026-12-07-planner-zoo
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swapseg.envinfo import environment
from swapseg.errors import InputError
from swapseg.io import write_json, write_text
from swapseg.offload import OffloadEngine
from swapseg.offload.measure import default_loss, profiled_peak_bytes
from swapseg.offload.policy import MemoryPlan
from swapseg.planner import PlanEvidence, measure_local, plan_memory
from swapseg.planner.profiles import DeviceProfile
from swapseg.planner.search import DEFAULT_MARGIN, Candidate, rank

BUDGETS = (0.8, 0.6, 0.4)


def _monai(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import monai.networks.nets as nets  # optional third-party package

        return getattr(nets, name)(**kw)
    return build


def _dna(name: str, dims: int = 3, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from dynamic_network_architectures.architectures import unet  # optional

        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
        return getattr(unet, name)(
            input_channels=1, n_stages=4, features_per_stage=(16, 32, 64, 128), conv_op=conv,
            kernel_sizes=3, strides=(1, 2, 2, 2), num_classes=3,
            n_conv_per_stage_decoder=1, norm_op=norm, norm_op_kwargs={"affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, **kw)
    return build


#: name -> (builder, input shape): small channel counts so activations dominate.
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "monai UNet (residual units)": (_monai(
        "UNet", spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128),
        strides=(2, 2, 2), num_res_units=2), (1, 1, 64, 64, 64)),
    "monai BasicUNet 2-D": (_monai(
        "BasicUNet", spatial_dims=2, in_channels=1, out_channels=3,
        features=(16, 16, 32, 64, 128, 16)), (1, 1, 256, 256)),
    "monai AttentionUnet": (_monai(
        "AttentionUnet", spatial_dims=3, in_channels=1, out_channels=3,
        channels=(16, 32, 64, 128), strides=(2, 2, 2)), (1, 1, 64, 64, 64)),
    "monai UNETR": (_monai(
        "UNETR", in_channels=1, out_channels=3, img_size=48, feature_size=16, hidden_size=48,
        mlp_dim=96, num_heads=4), (1, 1, 48, 48, 48)),
    "monai SwinUNETR": (_monai(
        "SwinUNETR", in_channels=1, out_channels=3, feature_size=12, depths=(2, 2, 2, 2),
        spatial_dims=3), (1, 1, 64, 64, 64)),
    "monai DynUNet (deep supervision)": (_monai(
        "DynUNet", spatial_dims=3, in_channels=1, out_channels=3, kernel_size=(3, 3, 3, 3),
        strides=(1, 2, 2, 2), upsample_kernel_size=(2, 2, 2), filters=(16, 32, 64, 128),
        deep_supervision=True, deep_supr_num=2, res_block=True), (1, 1, 64, 64, 64)),
    # VNet's fixed widths (16-256, 5^3 kernels) hold 174 MiB of parameters in 3-D, 4x that
    # with gradients and Adam, and a 3-D step where activations pass that takes half a
    # minute here; in 2-D (5x5 kernels) its activations dominate at CPU cost
    "monai VNet 2-D": (_monai("VNet", spatial_dims=2, in_channels=1, out_channels=3),
                       (1, 1, 512, 512)),
    "monai HighResNet (dilated residual)": (_monai(
        "HighResNet", spatial_dims=3, in_channels=1, out_channels=3), (1, 1, 48, 48, 48)),
    "monai SegResNet": (_monai(
        "SegResNet", spatial_dims=3, in_channels=1, out_channels=3, init_filters=16),
        (1, 1, 64, 64, 64)),
    "monai BasicUNet": (_monai(
        "BasicUNet", spatial_dims=3, in_channels=1, out_channels=3,
        features=(16, 16, 32, 64, 128, 16)), (1, 1, 64, 64, 64)),
    "nnU-Net PlainConvUNet": (_dna("PlainConvUNet", n_conv_per_stage=2),
                              (1, 1, 64, 64, 64)),
    "nnU-Net ResidualEncoderUNet": (_dna("ResidualEncoderUNet", n_blocks_per_stage=2),
                                    (1, 1, 64, 64, 64)),
}
QUICK = ("monai UNet (residual units)", "monai BasicUNet 2-D")


def measured_steps(model: nn.Module, shape: tuple[int, ...], plan: MemoryPlan | None,
                   steps: int = 3, timed: int = 2) -> tuple[list[int], list[float]]:
    """Peak bytes (profiler + weights + Adam state) of each of ``steps`` steps, then the
    wall seconds of ``timed`` more steps run without the profiler (its per-allocation
    bookkeeping would tax the plans that allocate more)."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    persistent = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    peaks, times = [], []
    with OffloadEngine(model, plan) as engine:  # one engine per run, entered per step
        for i in range(steps + timed):
            opt.zero_grad(set_to_none=True)

            def step() -> None:
                with engine.step():  # the output held through backward, as nnU-Net's
                    out = model(x)   # loop does and the planner's trace assumes
                    default_loss(out).backward()

            if i < steps:
                peaks.append(persistent + profiled_peak_bytes(step))
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            opt.step()
    return peaks, times


def rss_in_fresh_process(name: str, plan: MemoryPlan | None) -> int:
    """Peak RSS of ``--child`` running three steps of ``name`` under ``plan``, less its
    RSS before the first step."""
    with tempfile.TemporaryDirectory(prefix="swapseg-zoo-") as d:
        plan_path, out = Path(d, "plan.json"), Path(d, "out.json")
        plan_path.write_text(json.dumps((plan or MemoryPlan(name="none")).to_dict()))
        subprocess.run([sys.executable, __file__, "--child", name, "--plan", str(plan_path),
                        "--out", str(out)], check=True)
        return int(json.loads(out.read_text())["step_rss_bytes"])


def _child(name: str, plan_path: str, out: str) -> None:
    build, shape = ZOO[name]
    plan = MemoryPlan.from_dict(json.loads(Path(plan_path).read_text()))
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(shape)
    before = _status("VmRSS")
    with OffloadEngine(model, plan) as engine:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            with engine.step():
                y = model(x)  # held through backward, as in measured_steps
                default_loss(y).backward()
            opt.step()
    Path(out).write_text(json.dumps({"step_rss_bytes": _status("VmHWM") - before}))


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith(key + ":"))


def zoo_rows(name: str, budgets: tuple[float, ...], prof: DeviceProfile, rss: bool
             ) -> list[dict[str, Any]]:
    build, shape = ZOO[name]
    torch.manual_seed(0)
    model = build()
    # the lowest reachable peak: the search's lowest-peak plan at a budget nothing fits
    floor = plan_memory(model, shape, prof, budget_bytes=1, require_fit=False)
    keep = floor.keep_all.peak_bytes
    base_peaks, base_times = measured_steps(model, shape, None)
    rows = [{"net": name, "shape": list(shape), "budget": None, "plan": "keep-all",
             "predicted": keep, "measured": base_peaks, "step_ratio": 1.0,
             "floor": floor.predicted.peak_bytes, "floor_plan": floor.plan.name,
             "lowest_fraction": floor.predicted.peak_bytes / (1 - DEFAULT_MARGIN) / keep,
             "rss": rss_in_fresh_process(name, None) if rss else None}]
    for f in budgets:
        budget = int(f * keep)
        try:
            ev = plan_memory(model, shape, prof, budget_bytes=budget)
        except InputError as exc:
            rows.append({"net": name, "shape": list(shape), "budget": budget, "fraction": f,
                         "plan": None, "detail": str(exc)})
            continue
        peaks, times = measured_steps(model, shape, ev.plan)
        named = _best_named(ev)
        if named is not None and named.plan.name != ev.plan.name:
            _, named_times = measured_steps(model, shape, named.plan)
            named_row = {"plan": named.plan.name,
                         "predicted_ratio": named.result.step_s / ev.keep_all.step_s,
                         "step_ratio": statistics.median(named_times)
                         / statistics.median(base_times)}
        else:
            named_row = None
        rows.append({"net": name, "shape": list(shape), "budget": budget, "fraction": f,
                     "named": named_row,
                     "plan": ev.plan.name, "memory_plan": ev.plan.to_dict(),
                     "predicted": ev.predicted.peak_bytes,
                     "predicted_first_step": ev.predicted.first_step_peak_bytes,
                     "predicted_ratio": ev.predicted.step_s / ev.keep_all.step_s,
                     "measured": peaks,
                     "step_ratio": statistics.median(times) / statistics.median(base_times),
                     "fits": all(p <= budget for p in peaks),
                     "rss": rss_in_fresh_process(name, ev.plan) if rss else None})
    return rows


def _best_named(ev: PlanEvidence) -> Candidate | None:
    """The search's best fitting candidate among the named ones (not per-storage)."""
    named = [c for c in ev.rows if c.fits and not c.name.startswith("per-storage")]
    base = ev.keep_all.step_s
    return min(named, key=lambda c: rank(c.result, base)) if named else None


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], took: float) -> str:
    mib = 2**20
    out = ["# The planner on a zoo of networks (CPU)", "",
           f"{env['cpu']}, torch {env['torch']}; {took / 60:.1f} min. Peaks in MiB: "
           "predicted (the higher of the first and later steps), then measured on steps 1-3 "
           "(profiler allocations + weights + Adam state, one engine per run entered per "
           "step); error: predicted against the highest measured step; time: median step "
           "time of two more steps without the profiler, over keep-all's (predicted in "
           "brackets); RSS: a fresh process's peak RSS over the three steps less its RSS "
           "before them; best named plan: the search's best fitting plan that is not a "
           "per-storage one, measured the same way (predicted in brackets).", "",
           "| net | budget | plan | predicted | measured 1 / 2 / 3 | error | time | fits |"
           " RSS | best named plan that fits: time |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = "keep-all" if r["budget"] is None else \
            f"{r['fraction']:.1f} ({r['budget'] / mib:.0f})"
        if r["plan"] is None:
            out.append(f"| {r['net']} | {budget} | no plan: {_floor_part(r['detail'])} |"
                       " | | | | | | |")
            continue
        m = r["measured"]
        err = r["predicted"] / max(m) - 1
        rss = "" if r.get("rss") is None else f"{r['rss'] / mib:.0f}"
        fits = "" if r["budget"] is None else ("yes" if r["fits"] else "**no**")
        pred = f" ({r['predicted_ratio']:.2f}x)" if "predicted_ratio" in r else ""
        nr = r.get("named")
        named = "" if r["budget"] is None else "the chosen one" if nr is None else \
            f"{nr['plan']}: {nr['step_ratio']:.2f}x ({nr['predicted_ratio']:.2f}x)"
        out.append(f"| {r['net']} | {budget} | {r['plan']} | {r['predicted'] / mib:.1f} | "
                   f"{' / '.join(f'{p / mib:.1f}' for p in m)} | {err:+.1%} | "
                   f"{r['step_ratio']:.2f}x{pred} | {fits} | {rss} | {named} |")
    out += ["", "Per network: the lowest reachable peak (predicted; the search's lowest-peak "
            "plan) and the lowest budget that fits it after the 10% margin, as a fraction "
            "of keep-all's predicted peak.", "",
            "| net | shape | keep-all | lowest peak | its plan | lowest budget that fits |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        if r["budget"] is None:
            out.append(f"| {r['net']} | {'x'.join(map(str, r['shape']))} | "
                       f"{r['predicted'] / mib:.1f} | {r['floor'] / mib:.1f} | "
                       f"{r['floor_plan']} | {r['lowest_fraction']:.2f} |")
    return "\n".join(out) + "\n"


def _floor_part(detail: str) -> str:
    """The no-fit error's floor, without the budget it restates."""
    at = detail.find("the lowest reachable peak")
    return (detail[at:] if at >= 0 else detail)[:160]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 nets, budget 0.6 only")
    ap.add_argument("--rss", action="store_true", help="also peak RSS in fresh processes")
    ap.add_argument("--nets", default="", help="comma list of zoo names (default: all)")
    ap.add_argument("--out", default="benchmarks/results/planner-zoo")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--plan", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.plan, a.out)
        return
    names = QUICK if a.quick else tuple(n.strip() for n in a.nets.split(",") if n.strip()) \
        or tuple(ZOO)
    bad = [n for n in names if n not in ZOO]
    if bad:
        raise SystemExit(f"unknown nets {bad}; choose from {', '.join(ZOO)}")
    budgets = (0.6,) if a.quick else BUDGETS
    t0 = time.perf_counter()
    prof = measure_local(tier="disk")  # probes only, once for the zoo
    rows: list[dict[str, Any]] = []
    env = environment()
    for name in names:
        rows += zoo_rows(name, budgets, prof, a.rss)
        print(markdown(rows, env, time.perf_counter() - t0).splitlines()[-1], flush=True)
        write_json(a.out + ".json", {"environment": env, "profile": prof.to_dict(),
                                     "rows": rows})
        write_text(a.out + ".md", markdown(rows, env, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
