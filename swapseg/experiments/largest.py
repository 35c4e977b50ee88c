"""The largest cube side each memory-saving method trains under a hard memory cap.

For each method, a bisection over cube sides (multiples of the model's divisor) runs one
full training step (forward, training loss, backward, Adam step) per probe, each probe in
a fresh process under the cap (:mod:`swapseg.experiments.largest_probe`). A probe that
runs out of memory, or that the kernel kills, is a "does not fit", never a crash of the
search. The bisection starts at the planner's predicted largest side and then its
neighbour, so a good prediction settles a method in two probes.

Methods: ``none``; ``recompute-speed`` / ``recompute-full`` (every scope); ``swap-disk``
(everything to files); ``swap-host`` (host memory: pinned over the CUDA link on a GPU; on
a CPU that is the same memory, so it frees nothing); ``hybrid`` (recompute the decoder,
swap the rest); ``auto`` (the planner's fastest plan under the cap, re-planned at every
side). On a CPU ``hybrid`` and ``auto`` swap to the disk tier, the only one that frees
memory there; on a GPU they use the cuda tier.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

from torch import nn

from swapseg.errors import InputError
from swapseg.experiments.largest_probe import idle_process_bytes
from swapseg.experiments.methods_bench import dice_trace
from swapseg.experiments.paper_configs import hybrid_plan, paper_candidates
from swapseg.offload import MemoryPlan, RecomputePolicy, SwapPolicy
from swapseg.planner import DEFAULT_MARGIN, DeviceProfile, search
from swapseg.planner.simulate import simulate

__all__ = ["Method", "METHODS", "Probe", "bisect_largest", "method_plan", "predicted_fits",
           "predicted_largest", "run_probe", "search_method", "PROBE_PREFETCH"]

Method = Literal["none", "recompute-speed", "recompute-full", "swap-disk", "swap-host",
                 "hybrid", "auto"]
METHODS: tuple[str, ...] = get_args(Method)

#: Prefetch distance of the fixed swapping methods (the auto plan picks its own).
PROBE_PREFETCH = 4

ProbeStatus = Literal["fits", "oom", "killed", "timeout", "no_plan", "error"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe's outcome; ``fits`` only for a step that completed under the cap."""

    side: int
    status: ProbeStatus
    probe_s: float
    peak_rss_bytes: int | None = None
    step_s: float | None = None
    detail: str = ""
    plan: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.status == "fits"

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("side", "status", "probe_s", "peak_rss_bytes",
                                            "step_s", "detail", "plan")}
        d["fits"] = self.fits
        d.update(self.extra)
        return d


def bisect_largest(probe: Callable[[int], Probe], sides: Sequence[int],
                   guess: int | None = None) -> tuple[int | None, list[Probe]]:
    """The largest of ``sides`` (ascending) for which ``probe`` fits, assuming that a side
    fits whenever a larger one does. Starts at the side nearest ``guess`` and then its
    neighbour (above when the guess fits, below otherwise); halves the interval after."""
    sides = sorted(sides)
    lo, hi = -1, len(sides)  # sides[lo] fits (or lo == -1), sides[hi] fails (or hi == len)
    probes: list[Probe] = []
    nxt = None
    if guess is not None and sides:
        nxt = min(range(len(sides)), key=lambda i: (abs(sides[i] - guess), -sides[i]))
    guided = 2 if nxt is not None else 0
    while hi - lo > 1:
        mid = nxt if guided and nxt is not None and lo < nxt < hi else (lo + hi) // 2
        guided = max(0, guided - 1)
        r = probe(sides[mid])
        probes.append(r)
        if r.fits:
            lo, nxt = mid, mid + 1
        else:
            hi, nxt = mid, mid - 1
    return (sides[lo] if lo >= 0 else None), probes


def _on_disk(plan: MemoryPlan, disk_dir: str | None) -> MemoryPlan:
    if plan.swap is None or plan.swap.tier not in ("auto", "disk"):
        return plan
    swap = dataclasses.replace(plan.swap, tier="disk", disk_dir=disk_dir)
    return dataclasses.replace(plan, swap=swap)


def method_plan(method: str, model: nn.Module, shape: tuple[int, ...],
                profile: DeviceProfile, cap: int, cuda: bool = False,
                disk_dir: str | None = None, autocast_dtype: Any = None,
                process_bytes: int = 0) -> MemoryPlan | None:
    """The plan ``method`` runs at ``shape``; None when ``auto`` finds none that fits in
    ``cap`` less the process's own ``process_bytes``."""
    swap_tier = "cuda" if cuda else "disk"
    if method == "none":
        return MemoryPlan(name="none")
    if method in ("recompute-speed", "recompute-full"):
        mode = method.split("-")[1]
        return MemoryPlan(None, RecomputePolicy(("*",), mode), method)  # type: ignore[arg-type]
    if method == "swap-disk":  # files, on a GPU too
        return MemoryPlan(SwapPolicy(prefetch=PROBE_PREFETCH, tier="disk", disk_dir=disk_dir),
                          None, method)
    elif method == "swap-host":
        return MemoryPlan(SwapPolicy(prefetch=PROBE_PREFETCH, tier=swap_tier if cuda
                                     else "host"), None, method)
    elif method == "hybrid":
        h = hybrid_plan()
        assert h.swap is not None
        plan = dataclasses.replace(h, swap=dataclasses.replace(h.swap, tier=swap_tier))
    elif method == "auto":
        tr = dice_trace(model, shape, autocast_dtype)
        c = search(tr, profile, cap - process_bytes, extra=paper_candidates(tr),
                   require_fit=False).chosen
        if c is None:
            return None
        plan = MemoryPlan(c.swap, c.recompute, f"auto: {c.name}")
    else:
        raise InputError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    return plan if cuda else _on_disk(plan, disk_dir)


def predicted_fits(method: str, model: nn.Module, side: int, channels: int,
                   profile: DeviceProfile, cap: int, cuda: bool = False,
                   autocast_dtype: Any = None, process_bytes: int = 0) -> bool:
    """The planner's verdict: the method's predicted peak fits the cap, less the
    process's own bytes, less the margin."""
    shape = (1, channels, side, side, side)
    plan = method_plan(method, model, shape, profile, cap, cuda, None, autocast_dtype,
                       process_bytes)
    if plan is None:
        return False
    tr = dice_trace(model, shape, autocast_dtype)
    return simulate(tr, profile, plan.swap, plan.recompute).peak_bytes \
        <= (cap - process_bytes) * (1 - DEFAULT_MARGIN)


def predicted_largest(method: str, model: nn.Module, sides: Sequence[int], channels: int,
                      profile: DeviceProfile, cap: int, cuda: bool = False,
                      autocast_dtype: Any = None, process_bytes: int = 0) -> int | None:
    """The largest side the planner predicts to fit (same bisection, simulated probes)."""
    def probe(s: int) -> Probe:
        ok = predicted_fits(method, model, s, channels, profile, cap, cuda, autocast_dtype,
                            process_bytes)
        return Probe(s, "fits" if ok else "oom", 0.0)
    return bisect_largest(probe, sides)[0]


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_probe(side: int, plan: MemoryPlan, cap: int, *, channels: int = 4,
              model_spec: str = "isensee", model_kwargs: str | None = None,
              device: str = "cpu",
              precision: str = "32", steps: int = 1, timeout_s: float | None = None,
              python: str = sys.executable) -> Probe:
    """One training step at ``side`` under ``cap`` in a fresh process (see the probe
    module); any way the process fails is a Probe, never an exception."""
    load0 = _loadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="swapseg-probe-") as d:
        plan_path, out_path = os.path.join(d, "plan.json"), os.path.join(d, "probe.json")
        with open(plan_path, "w") as fh:
            json.dump(plan.to_dict(), fh)
        cmd = [python, "-m", "swapseg.experiments.largest_probe", "--side", str(side),
               "--channels", str(channels), "--model", model_spec, "--plan", plan_path,
               "--cap", str(cap), "--device", device, "--precision", precision,
               "--steps", str(steps), "--out", out_path]
        if model_kwargs:
            cmd += ["--model-kwargs", model_kwargs]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the probe and any copy threads' children
            proc.communicate()
            return Probe(side, "timeout", time.perf_counter() - t0,
                         detail=f"no result within {timeout_s:.0f} s", plan=plan.name,
                         extra={"load_before": load0, "load_after": _loadavg()})
        dt = time.perf_counter() - t0
        extra: dict[str, Any] = {"load_before": load0, "load_after": _loadavg()}
        if os.path.exists(out_path):
            with open(out_path) as fh:
                r = json.load(fh)
            extra.update({k: r[k] for k in ("step_s_all", "wall_s", "vm_peak_bytes",
                                             "rlimit_data_bytes", "cap_enforced",
                                             "cuda_peak_bytes", "bytes_out", "bytes_in",
                                             "wait_s", "peak_saved_device_bytes",
                                             "tier") if k in r})
            return Probe(side, r["status"], dt, r.get("peak_rss_bytes"), r.get("step_s"),
                         r.get("detail", ""), plan.name, extra)
        last = (err or "").strip().splitlines()[-1:] or [""]
        if proc.returncode < 0:  # e.g. SIGKILL by the OOM killer, SIGABRT on bad_alloc
            return Probe(side, "killed", dt, detail=f"killed by signal {-proc.returncode}; "
                         f"{last[0][:200]}", plan=plan.name, extra=extra)
        return Probe(side, "error", dt, detail=f"exit {proc.returncode}: {last[0][:300]}",
                     plan=plan.name, extra=extra)


def search_method(method: str, model: nn.Module, sides: Sequence[int], cap: int,
                  profile: DeviceProfile, *, guess: int | None = None, channels: int = 4,
                  cuda: bool = False, disk_dir: str | None = None,
                  autocast_dtype: Any = None, process_bytes: int = 0,
                  progress: Callable[[str], None] | None = None,
                  on_probe: Callable[[Probe], None] | None = None,
                  **probe_kwargs: Any) -> tuple[int | None, list[Probe]]:
    """Bisect ``method``'s largest side under ``cap`` with real probes."""
    def probe(s: int) -> Probe:
        shape = (1, channels, s, s, s)
        plan = method_plan(method, model, shape, profile, cap, cuda, disk_dir, autocast_dtype,
                           process_bytes)
        if plan is None:
            r = Probe(s, "no_plan", 0.0, detail="the planner finds no plan under the cap")
        else:
            if progress:
                progress(f"{method} side {s}: probing ({plan.name})")
            r = run_probe(s, plan, cap, channels=channels, **probe_kwargs)
        if progress:
            rss = f", peak RSS {r.peak_rss_bytes / 2**30:.2f} GiB" if r.peak_rss_bytes else ""
            step = f", step {r.step_s:.1f} s" if r.step_s else ""
            why = f" ({r.detail})" if r.detail and not r.fits else ""
            progress(f"{method} side {s}: {r.status}{rss}{step}; probe took "
                     f"{r.probe_s:.1f} s{why}")
        if on_probe:
            on_probe(r)
        return r
    return bisect_largest(probe, sides, guess)


def _method_row(largest: int | None, probes: list[Probe], predicted: int | None,
                complete: bool) -> dict[str, Any]:
    best = next((p for p in probes if p.fits and p.side == largest), None)
    return {"largest_side": largest,
            "peak_rss_bytes": best.peak_rss_bytes if best else None,
            "cuda_peak_bytes": best.extra.get("cuda_peak_bytes") if best else None,
            "step_s": best.step_s if best else None,
            "plan": best.plan if best else None,
            "predicted_largest_side": predicted, "complete": complete,
            "probes": [p.as_dict() for p in probes]}


def run_largest(model: nn.Module, methods: Sequence[str], cap: int, sides: Sequence[int],
                profile: DeviceProfile, *, write: Callable[[dict[str, Any]], None],
                previous: dict[str, Any] | None = None, channels: int = 4,
                cuda: bool = False, disk_dir: str | None = None, autocast_dtype: Any = None,
                moonshot_side: int | None = None, moonshot_cap: int | None = None,
                progress: Callable[[str], None] | None = None,
                process_bytes: int | None = None,
                **probe_kwargs: Any) -> dict[str, Any]:
    """Every method's search, then the moonshot; ``write(result)`` after each probe, so
    a killed run leaves what it measured. Methods complete in ``previous`` (an earlier
    largest.json under the same cap) are kept, their predictions refreshed.

    On a CPU the cap bounds the whole probe process, so its own bytes (``process_bytes``;
    None: measured once, ``idle_process_bytes``) come off the cap before planning and
    predicting; on a GPU the cap is the device's memory alone (0)."""
    from swapseg.envinfo import environment

    res: dict[str, Any] = {
        "cap_bytes": cap, "device": "cuda" if cuda else "cpu",
        "cap_enforced": "torch.cuda.set_per_process_memory_fraction" if cuda
        else "RLIMIT_DATA (per probe process)",
        "peak_is": "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM)",
        "environment": environment(), "sides": list(sides),
        "local_profile": profile.to_dict(), "margin": DEFAULT_MARGIN,
        "methods": {}, "moonshot_256": None}
    if process_bytes is None:
        process_bytes = 0 if cuda else idle_process_bytes(probe_kwargs.get("python",
                                                                          sys.executable))
    res["process_bytes"] = process_bytes
    res["process_bytes_is"] = "0: the cap is the GPU's memory" if cuda else \
        "peak RSS of an idle probe process (imports, one tiny conv step)"
    if progress and process_bytes:
        progress(f"the probe process holds {process_bytes / 2**20:.0f} MiB before its "
                 "model: counted against the cap")
    if previous and previous.get("cap_bytes") == cap:
        res["methods"] = dict(previous.get("methods", {}))
        res["moonshot_256"] = previous.get("moonshot_256")
    for m in methods:
        pred = predicted_largest(m, model, sides, channels, profile, cap, cuda, autocast_dtype,
                                 process_bytes)
        old = res["methods"].get(m)
        if old and old.get("complete"):
            old["predicted_largest_side"] = pred
            if progress:
                progress(f"{m}: kept the earlier result (largest side {old['largest_side']}); "
                         f"predicted {pred}")
            continue
        if progress:
            progress(f"{m}: planner predicts largest side {pred}")
        probes: list[Probe] = []

        def record(p: Probe, m: str = m, pred: int | None = pred,
                   probes: list[Probe] = probes) -> None:
            probes.append(p)
            fits = [q.side for q in probes if q.fits]
            res["methods"][m] = _method_row(max(fits) if fits else None, probes, pred, False)
            write(res)

        largest, _ = search_method(m, model, sides, cap, profile, guess=pred,
                                   channels=channels, cuda=cuda, disk_dir=disk_dir,
                                   autocast_dtype=autocast_dtype, progress=progress,
                                   on_probe=record, process_bytes=process_bytes,
                                   **probe_kwargs)
        res["methods"][m] = _method_row(largest, probes, pred, True)
        write(res)
    if moonshot_side:
        res["moonshot_256"] = moonshot(model, moonshot_side, moonshot_cap or 0, profile,
                                       channels=channels, cuda=cuda, disk_dir=disk_dir,
                                       autocast_dtype=autocast_dtype, progress=progress,
                                       searched=res, **probe_kwargs)
        write(res)
    return res


def _searched_probe(res: dict[str, Any] | None, side: int, cap: int) -> dict[str, Any] | None:
    """A fitting probe of the swap-disk search at ``side`` under a cap no larger than
    ``cap``: the moonshot's step already run, under a tighter bound."""
    if not res or (cap and res["cap_bytes"] > cap):
        return None
    row = res["methods"].get("swap-disk") or {}
    return next((p for p in row.get("probes", []) if p["side"] == side and p["fits"]), None)


def moonshot(model: nn.Module, side: int, cap: int, profile: DeviceProfile, *,
             channels: int = 4, cuda: bool = False, disk_dir: str | None = None,
             autocast_dtype: Any = None, progress: Callable[[str], None] | None = None,
             searched: dict[str, Any] | None = None, **probe_kwargs: Any) -> dict[str, Any]:
    """One step at ``side`` with everything swapped to disk, next to the planner's
    predicted compute time of that step (no swapping, no recomputation). When the
    swap-disk search in ``searched`` already ran that step under a cap no larger than
    ``cap``, its probe is the result and nothing runs again."""
    shape = (1, channels, side, side, side)
    plan = method_plan("swap-disk", model, shape, profile, cap, cuda, disk_dir, autocast_dtype)
    assert plan is not None
    tr = dice_trace(model, shape, autocast_dtype)
    compute = simulate(tr, profile).compute_s
    pred = simulate(tr, profile, plan.swap, plan.recompute)
    if progress:
        progress(f"moonshot {side}^3 ({plan.name}, cap {cap / 2**30:.1f} GiB): predicted "
                 f"compute {compute:.0f} s, step {pred.step_s:.0f} s")
    old = _searched_probe(searched, side, cap)
    if old is not None:
        r = Probe(side, "fits", old["probe_s"], old["peak_rss_bytes"], old["step_s"],
                  plan=old["plan"], extra={
                      **{k: v for k, v in old.items() if k not in Probe.__annotations__},
                      "from": f"the swap-disk search's probe at this side, under its "
                              f"{searched['cap_bytes']} B cap"})  # type: ignore[index]
    else:
        r = run_probe(side, plan, cap, channels=channels, **probe_kwargs)
    if progress:
        progress(f"moonshot {side}^3: {r.status}, step {r.step_s or 0:.1f} s, "
                 f"peak RSS {(r.peak_rss_bytes or 0) / 2**30:.2f} GiB, probe {r.probe_s:.0f} s"
                 + (f" ({r.detail})" if r.detail else ""))
    return {"side": side, "completed": r.fits, "peak_rss_bytes": r.peak_rss_bytes,
            "step_s": r.step_s, "cap_bytes": cap, "plan": plan.to_dict(),
            "predicted_compute_s": compute, "predicted_step_s": pred.step_s,
            "predicted_peak_bytes": pred.peak_bytes,
            "step_over_predicted_compute": (r.step_s / compute) if r.step_s else None,
            "probe": r.as_dict()}
