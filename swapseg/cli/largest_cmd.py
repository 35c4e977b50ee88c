"""`swapseg bench largest`: the largest cube side each method trains under a hard cap."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from swapseg.cli import grammar as g
from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.experiments.largest import METHODS, run_largest
from swapseg.experiments.methods_bench import dice_loss
from swapseg.io import write_json, write_text
from swapseg.models.registry import build_model
from swapseg.planner.local import get_profile
from swapseg.planner.profiles import DeviceProfile
from swapseg.progress import cli_progress, line_printer

__all__ = ["add_largest_flags", "run_largest_cmd", "largest_markdown", "parse_sides"]


def add_largest_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("largest (swapseg bench largest)")
    a.add_argument("--methods", default="none,recompute-speed,recompute-full,swap-disk,auto",
                   help="comma list of none, recompute-speed, recompute-full, swap-disk, "
                        "swap-host, hybrid, auto (default: all but swap-host and hybrid)")
    a.add_argument("--sides", default=None,
                   help="comma list of cube sides to search instead of --range, e.g. 128")
    a.add_argument("--range", default="64:320", dest="side_range", metavar="LO:HI",
                   help="sides searched: the multiples of the model's divisor in LO..HI "
                        "(default 64:320)")
    a.add_argument("--model", default="isensee",
                   help="registered model name or module.path:callable (default isensee)")
    a.add_argument("--model-kwargs", default=None, help="JSON object of model arguments")
    a.add_argument("--channels", type=g.integer(1), default=4, help="input channels (default 4)")
    a.add_argument("--probe-steps", type=g.integer(1), default=1,
                   help="training steps per probe (default 1)")
    a.add_argument("--probe-timeout", type=g.number(1.0, float("inf")), default=3600.0,
                   metavar="S",
                   help="seconds before a probe is killed and reported as timeout")
    a.add_argument("--disk-dir", type=g.output_dir, default=None,
                   help="folder of the disk tier's files")
    a.add_argument("--moonshot", type=g.integer(1), default=None, metavar="SIDE",
                   help="after the search, one step at SIDE^3 with everything swapped")
    a.add_argument("--moonshot-cap", type=g.byte_size, default=None, metavar="SIZE",
                   help="cap of the moonshot probe (default: --cap)")
    a.add_argument("--resume", action="store_true",
                   help="keep the methods an existing OUT/largest.json (same cap) completed")


def parse_sides(text: str | None, side_range: str, divisor: int) -> list[int]:
    """``--sides 128,144`` or the multiples of ``divisor`` in ``--range LO:HI``."""
    try:
        if text:
            sides = sorted({int(s) for s in text.split(",") if s.strip()})
        else:
            lo, hi = (int(x) for x in side_range.split(":"))
            sides = list(range(-(-lo // divisor) * divisor, hi + 1, divisor))
    except ValueError:
        raise InputError(f"sides {text or side_range!r}: expected N,N,... or LO:HI") from None
    bad = [s for s in sides if s < divisor or s % divisor]
    if not sides or bad:
        raise InputError(f"sides {text or side_range!r}: need positive multiples of the "
                         f"model's divisor {divisor}" + (f", not {bad}" if bad else ""))
    return sides


def _profile(spec: str | None, model: Any, cuda: bool, channels: int) -> Any:
    if spec and Path(spec).is_file():
        try:
            return DeviceProfile.from_dict(json.loads(Path(spec).read_text()))
        except (ValueError, TypeError) as exc:
            raise InputError(f"--profile {spec}: not a device profile JSON ({exc})") from None
    if spec and spec != "local":
        return get_profile(spec)
    return get_profile("local", model, tier="cuda" if cuda else "disk",
                       calibrate_shape=None if cuda else (1, channels, 64, 64, 64),
                       loss_fn=dice_loss)


def run_largest_cmd(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model = build_model(args.model, args.model_kwargs)
    divisor = int(getattr(model, "divisor", 16))
    sides = parse_sides(args.sides, args.side_range, divisor)
    if args.moonshot is not None and args.moonshot % divisor:
        raise InputError(f"--moonshot {args.moonshot}: not a multiple of the model's "
                         f"divisor {divisor}")
    out = Path(args.out)
    prev = None
    if args.resume and (out / "largest.json").is_file():
        prev = json.loads((out / "largest.json").read_text())
    profile = _profile(args.profile, model, cuda, args.channels)

    def write(res: dict[str, Any]) -> None:
        write_json(out / "largest.json", res)
        write_text(out / "largest.md", largest_markdown(res))

    res = run_largest(model, methods, args.cap, sides, profile, write=write, previous=prev,
                      channels=args.channels, cuda=cuda, disk_dir=args.disk_dir,
                      autocast_dtype=g.autocast_dtype(args.precision),
                      moonshot_side=args.moonshot, moonshot_cap=args.moonshot_cap or args.cap,
                      progress=line_printer("largest", cli_progress(args.no_progress)),
                      model_spec=args.model, model_kwargs=args.model_kwargs, device=str(device),
                      precision=args.precision, steps=args.probe_steps,
                      timeout_s=args.probe_timeout)
    res.update(model=args.model, precision=args.precision, probe_steps=args.probe_steps)
    write(res)
    print(largest_markdown(res))
    return 0


def _gib(v: Any) -> str:
    return "" if v is None else f"{v / 2**30:.2f}"


def largest_markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [f"# Largest cube side under a {res['cap_bytes'] / 2**30:.1f} GiB cap", "",
             f"{env['cpu']}, {env.get('torch_threads')} threads, torch {env['torch']}; cap "
             f"enforced with {res['cap_enforced']}; peak = {res['peak_is']}; one probe "
             "process per side, bisection over sides." + (
                 f" The probe process's own {res['process_bytes'] / 2**20:.0f} MiB "
                 f"({res.get('process_bytes_is', '')}) are counted against the cap in "
                 "the predictions." if res.get("process_bytes") else ""), "",
             "| method | largest side | predicted | peak GiB | step s | plan | probes |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["methods"].items():
        probes = ", ".join(f"{p['side']}:{p['status']} ({p['probe_s']:.0f} s)"
                           for p in r["probes"])
        lines.append(f"| {name} | {r['largest_side']} | {r['predicted_largest_side']} | "
                     f"{_gib(r.get('cuda_peak_bytes') or r['peak_rss_bytes'])} | "
                     f"{'' if r['step_s'] is None else format(r['step_s'], '.1f')} | "
                     f"{r['plan'] or ''} | {probes}"
                     f"{'' if r.get('complete') else ' (search incomplete)'} |")
    m = res.get("moonshot_256")
    if m:
        done = "completed" if m["completed"] else f"did not complete: {m['probe']['status']}"
        lines += ["", f"Moonshot {m['side']}^3 ({m['plan'].get('name', '')}, cap "
                  f"{m['cap_bytes'] / 2**30:.1f} GiB): {done}"
                  f"; peak RSS {_gib(m['peak_rss_bytes'])} GiB; step "
                  f"{m['step_s'] or 0:.0f} s against a predicted compute time of "
                  f"{m['predicted_compute_s']:.0f} s."]
    return "\n".join(lines) + "\n"
