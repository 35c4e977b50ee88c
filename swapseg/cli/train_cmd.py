"""``swapseg train``: train the Isensee U-Net on a BraTS-style data set (one fold or all)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

from swapseg.cli import grammar as g
from swapseg.cli.config_flags import add_config_args, config_changes, resume_fields
from swapseg.cli.config_flags import flags as config_flags
from swapseg.cli.grammar import parse_bytes
from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.offload.policy import SwapPolicy
from swapseg.progress import cli_progress
from swapseg.training.config import PRESETS, TrainConfig
from swapseg.training.interrupt import Interrupted, stop_signals
from swapseg.training.loop import train, train_all_folds
from swapseg.training.planning import swap_plan
from swapseg.training.rundir import absolute_paths, clear_run, holds_run

__all__ = ["register", "run", "parse_bytes", "config_from_args", "config_and_budget",
           "resume_command", "RESUME_FLAGS"]

EPILOG = """examples:
  swapseg train --data brats18/ --out runs/full                     # 192^3, the paper's arm
  swapseg train --data brats18/ --out runs/cpu --shape 64 --zoom 3  # real cases on a CPU
  swapseg train --data brats18/ --out runs/patch --mode patch --patch 128 --fold all
  swapseg train --data synth/ --out runs/tiny --preset tiny --zoom 4 --epochs 5 --swap all
  swapseg train --data synth/ --out runs/tuned --swap all --swap-exclude 'decoder.*' \\
      --swap-prefetch 20 --trace-step 3
  swapseg train --data brats18/ --out runs/auto --swap auto --memory-budget 16GiB
  swapseg train --out runs/full --resume          # continue after a crash, a kill, Ctrl-C
  swapseg train --out runs/full --resume --epochs 600   # a finished run, trained on
  swapseg train --data brats18/ --out runs/a --cache-dir cache/ # runs may share a cache
  swapseg train --data brats18/ --out runs/bf16 --precision bf16-mixed --swap all
  swapseg train --data brats18/ --out runs/fast --precision 16-mixed --compile

With --resume the run's config.json decides; only --epochs, --time-limit, --device,
--data (the data set moved) and the memory plan (--swap, --swap-*, --memory-budget: e.g.
after running out of memory; a plan changes memory, not the maths) apply, other flags
are ignored with a note. A folder that
holds a run is never overwritten without --overwrite. SIGTERM or Ctrl-C stop after the
current step with a checkpoint written (exit 143 or 130).
"""

def register(subparsers: Any) -> None:
    p = g.add_command(
        subparsers, "train", "train the 3D U-Net (full volumes or patches, k-fold)",
        "Train the Isensee 2017 3D U-Net with the reference protocol (Adam 5e-4, "
        "LR x0.5 after 10 epochs without validation improvement, early stop "
        "after 50), optionally with activation swapping.",
        EPILOG + "\npresets, as the flags each one sets (a flag given overrides its value):\n"
        + "".join(textwrap.fill(flags, 92, initial_indent=f"  {name:12s}",
                                subsequent_indent=" " * 14) + "\n"
                  for name, flags in preset_flags().items()))
    p.add_argument("--out", type=g.output_dir, required=True, help="run directory")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="starting configuration (default brats_full; see below)")
    p.add_argument("--fold", default=None, help="fold index K (0-based) or 'all'")
    add_config_args(p, CONFIG_FIELDS)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt with OUT/config.json "
                        "(from the beginning when there is no checkpoint yet)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (its cache/ is kept)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    add_precision_args(p)
    _add_swap_args(p)
    p.set_defaults(func=run)


def _flag_value(value: Any) -> str:
    if isinstance(value, tuple) and len(set(value)) == 1 and len(value) == 3:
        return str(value[0])  # a cube: the shape grammar's N
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def preset_flags() -> dict[str, str]:
    """Each preset as the command-line flags it sets over ``TrainConfig``'s defaults."""
    base, out = TrainConfig(), {}
    for name, preset in PRESETS.items():
        c = preset()
        flags = [f"{FLAGS.get(f.name, f.name)} {_flag_value(getattr(c, f.name))}"
                 for f in dataclasses.fields(c)
                 if f.name != "plan" and getattr(c, f.name) != getattr(base, f.name)]
        if c.swap is not None:
            flags.append("--swap all")
            flags += [f"{FLAGS[f.name]} {_flag_value(getattr(c.swap, f.name))}"
                      for f in dataclasses.fields(c.swap)
                      if getattr(c.swap, f.name) != getattr(SwapPolicy(), f.name)]
        out[name] = " ".join(flags) or "(none: the paper's full-volume protocol)"
    return out


def add_precision_args(p: argparse.ArgumentParser, compile_flag: bool = True) -> None:
    """``--precision`` (and ``--compile``): shared by train, experiment and demo."""
    add_config_args(p, ("precision", "compile") if compile_flag else ("precision",))


def _add_swap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("activation swapping")
    g.add_argument("--swap",
                   help="none; all (every activation to the tier that frees the device's "
                        "memory: disk on a CPU, pinned host memory on a GPU); auto (planned "
                        "once into OUT/plan.json for --memory-budget, or for the device's "
                        "available memory); or a JSON file: a SwapPolicy, or the MemoryPlan "
                        "that `swapseg plan --out` writes (default: the preset's, none except "
                        "for the demo)")
    g.add_argument("--swap-n-tensors", type=int, dest="n_tensors", metavar="N",
                   help="swap the first N saved tensors (-1: all)")
    g.add_argument("--swap-include", action="append", dest="include", metavar="GLOB",
                   help="only swap under these module scopes (repeatable)")
    g.add_argument("--swap-exclude", action="append", dest="exclude", metavar="GLOB",
                   help="keep these module scopes on the device, e.g. 'decoder.*'")
    g.add_argument("--swap-min-bytes", type=int, dest="min_bytes", metavar="BYTES",
                   help="keep smaller tensors on the device")
    g.add_argument("--swap-prefetch", type=int, dest="prefetch", metavar="N",
                   help="start swap-ins N tensors ahead of use (TFLMS lb)")
    g.add_argument("--swap-branches", action="store_true", default=None, dest="swap_branches",
                   help="also swap skip connections during forward")
    g.add_argument("--swap-tier", choices=["auto", "cuda", "host", "disk"], dest="tier",
                   help="where swapped bytes go (auto: cuda on a GPU, disk on a CPU)")
    g.add_argument("--swap-disk-dir", dest="disk_dir", metavar="DIR",
                   help="folder of the disk tier (default: a fresh temporary one)")
    g.add_argument("--memory-budget", dest="memory_budget_bytes", metavar="SIZE",
                   help="with --swap auto: bytes the step must fit in (e.g. 16GiB; default: "
                        "the device's available memory)")
    add_config_args(g, ("trace_step",))


_POLICY_FIELDS = ("n_tensors", "include", "exclude", "min_bytes", "prefetch",
                  "swap_branches", "tier", "disk_dir")


def plan_given(args: argparse.Namespace) -> bool:
    """True when the command line says anything about the memory plan."""
    return args.swap is not None or args.memory_budget_bytes is not None or \
        any(getattr(args, f) is not None for f in _POLICY_FIELDS)


def _swap_plan(args: argparse.Namespace, preset: Any, device: Any) -> tuple[Any, int | None]:
    """(the MemoryPlan the flags describe on ``device``, the budget ``--swap auto`` plans
    for), starting from the preset's plan ``preset`` when ``--swap`` is not given.
    ``--swap`` means what ``training.planning.swap_plan`` says; ``--swap-*`` flags change
    the plan's swap policy."""
    flags = {f: getattr(args, f) for f in _POLICY_FIELDS if getattr(args, f) is not None}
    budget = None if args.memory_budget_bytes is None else \
        parse_bytes(args.memory_budget_bytes, "--memory-budget")
    swap = args.swap or ("none" if preset is None else "preset")
    if swap == "auto" and flags:
        raise InputError(f"--swap auto chooses the plan; drop {_SWAP_FLAGS[next(iter(flags))]}")
    if swap == "none" and flags:
        raise InputError(f"{_SWAP_FLAGS[next(iter(flags))]} needs --swap all "
                         "or --swap FILE.json")
    if swap == "preset":
        if budget is not None:
            raise InputError("--memory-budget is only used with --swap auto")
        plan = preset.concrete(device.type)
    else:
        plan, budget = swap_plan(swap, budget, device)
    if not flags or plan is None:
        return plan, budget
    if plan.swap is None:
        raise InputError(f"{_SWAP_FLAGS[next(iter(flags))]}: the plan in --swap {swap} "
                         "swaps nothing")
    return plan.replace(swap=plan.swap.replace(**flags)).concrete(device.type), budget


#: The config fields that train's flags set (besides --out, --fold and the memory plan).
CONFIG_FIELDS = ("data", "mode", "shape", "zoom", "patch", "patches_per_volume",
                 "tumor_fraction", "batch_size", "max_epochs", "early_stop", "lr_patience",
                 "max_train_s", "lr", "dropout", "loss", "base_filters", "depth", "folds",
                 "seed", "workers", "device", "augment", "cache_dir")
#: Flags that apply with --resume (safe: they change when the run stops, where it runs,
#: where its data now lives or where its saved tensors live, not what an epoch computes),
#: by config field (``TrainConfig``'s metadata). The memory plan's flags (--swap, --swap-*,
#: --memory-budget) apply too.
RESUME_FLAGS = resume_fields()
_SWAP_FLAGS = {"swap": "--swap", "memory_budget_bytes": "--memory-budget",
               **{f: f"--swap-{f}".replace("_", "-") for f in ("n_tensors", "include",
                                                             "exclude", "min_bytes",
                                                             "prefetch", "tier", "disk_dir")},
               "swap_branches": "--swap-branches"}
#: Every config field a flag sets, by field (config checks name fields; errors name flags).
FLAGS = {**config_flags(), "batch": "--batch", **_SWAP_FLAGS}
_IGNORED_ON_RESUME = {f: flag for f, flag in FLAGS.items()
                      if f not in RESUME_FLAGS and f not in _SWAP_FLAGS
                      and f not in ("out", "fold", "batch")}


def _resumed_config(args: argparse.Namespace, saved: Path) -> tuple[Any, int | None]:
    """The run's own config, with absolute paths and the flags that apply on resume; a
    new memory plan when one is given (and the budget ``--swap auto`` plans for)."""
    try:
        d = absolute_paths(json.loads(saved.read_text()), args.out)
    except json.JSONDecodeError as exc:
        raise InputError(f"{saved}: not valid JSON ({exc})") from None
    given = {f: getattr(args, f) for f in RESUME_FLAGS if getattr(args, f) is not None}
    if "data" in given:
        given["data"] = os.path.abspath(given["data"])
    ignored = [flag for f, flag in _IGNORED_ON_RESUME.items()
               if getattr(args, f, None) is not None]
    if args.preset is not None:
        ignored.insert(0, "--preset")
    if args.fold not in (None, "all"):
        ignored.append("--fold")
    if ignored:
        print(f"swapseg: --resume continues the run as {saved} says: ignoring "
              f"{', '.join(ignored)} (only {', '.join(RESUME_FLAGS.values())} and the "
              "memory plan's flags apply)", file=sys.stderr)
    d.update(given)
    if not Path(d["data"]).is_dir():
        raise InputError(f"{saved}: data folder {d['data']} not found; give --data DIR "
                         "with --resume")
    config = TrainConfig.from_dict(d)
    if not plan_given(args):
        return config, None
    with g.fields_as_flags(FLAGS):
        # --swap-* flags alone change the run's own plan
        plan, budget = _swap_plan(args, config.plan, resolve_device(config.device))
        config = config.replace(plan=plan)
    print(f"swapseg: --resume with a new memory plan ({_plan_name(config, budget)}): a plan "
          "changes where saved tensors live, not what a step computes, so the run goes on "
          "as it would have", file=sys.stderr)
    return config, budget


def _plan_name(config: Any, budget: int | None) -> str:
    if budget is not None:
        return "chosen by --swap auto"
    return "none" if config.plan is None else config.plan.name or "given"


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig that the command line describes (or the run's own, with --resume)."""
    return config_and_budget(args)[0]


def config_and_budget(args: argparse.Namespace) -> tuple[Any, int | None]:
    """The TrainConfig that the command line describes (or the run's own, with --resume),
    and the memory budget that ``--swap auto`` plans for (None: no planning)."""
    saved = Path(args.out) / "config.json"
    if args.resume and args.overwrite:
        raise InputError("--resume continues the run in --out, --overwrite replaces it: "
                         "give one of them")
    if args.resume and saved.is_file():
        return _resumed_config(args, saved)
    if not args.data:
        raise InputError("--data DIR is required (except with --resume of an existing run)")
    changes = config_changes(args, (*CONFIG_FIELDS, "precision", "compile", "trace_step"))
    changes.pop("data", None)
    if args.fold not in (None, "all"):
        try:
            changes["fold"] = int(args.fold)
        except ValueError:
            raise InputError(f"--fold {args.fold!r}: expected an integer or 'all'") from None
    if args.cache_dir is not None:
        changes["cache_dir"] = os.path.abspath(args.cache_dir)
    preset = PRESETS[args.preset or "brats_full"]
    with g.fields_as_flags(FLAGS):
        defaults = preset()
        plan, budget = _swap_plan(args, defaults.plan,
                                  resolve_device(changes.get("device", defaults.device)))
        # absolute, so that --resume works from any directory
        return preset(data=os.path.abspath(args.data), out=os.path.abspath(args.out),
                      plan=plan, **changes), budget


def _claim_out(args: argparse.Namespace) -> None:
    """Refuse to train over a run without --resume or --overwrite; clear it on --overwrite."""
    # under torchrun only rank 0 decides: the others would see the files it just wrote
    if args.resume or int(os.environ.get("RANK", "0")) != 0 or not holds_run(args.out):
        return
    if not args.overwrite:
        raise InputError(f"{args.out} holds a training run: continue it with --resume, or "
                         "replace it with --overwrite")
    clear_run(args.out)


def resume_command(out: str | Path, fold_all: bool = False) -> str:
    """The command that continues the run in ``out``."""
    return shlex.join(["swapseg", "train", "--out", os.path.abspath(out),
                       *(["--fold", "all"] if fold_all else []), "--resume"])


def _what(config: Any, args: argparse.Namespace, budget: int | None) -> str:
    """One line saying what trains, so that a preset's shape is never a surprise."""
    unit = f"{config.patch}^3 patches of " if config.mode == "patch" else ""
    if budget is not None:
        swap = "memory plan chosen by --swap auto"
    elif config.plan is None:
        swap = "no memory plan"
    else:
        tier = f", swapping to {config.swap.tier}" if config.swap is not None else ""
        swap = f"memory plan {config.plan.name or 'given'}{tier}"
    return (f"train: {'resumed run' if args.resume else 'preset ' + (args.preset or 'brats_full')}"
            f": {unit}{'x'.join(map(str, config.shape))} volumes (zoom {config.zoom}), "
            f"U-Net base {config.base_filters} depth {config.depth}, up to {config.max_epochs} "
            f"epochs, {swap}, precision {config.precision}, device {config.device}")


def host_tier_warning(policy: Any, device: str) -> str | None:
    """The one warning line for host-tier swapping (asked for with --swap-tier host) on a
    CPU, where it frees nothing."""
    if policy is None or policy.tier != "host" or policy.n_tensors == 0 \
            or resolve_device(device).type != "cpu":
        return None
    return ("swapseg: warning: host-tier swapping on a CPU saves no memory (device and host "
            "memory are the same RAM) and only costs time; use --swap-tier disk, "
            "recomputation, or --swap auto --memory-budget SIZE")


def run(args: argparse.Namespace) -> int:
    config, budget = config_and_budget(args)  # a bad size fails before --overwrite clears
    _claim_out(args)
    print(_what(config, args, budget))
    warning = host_tier_warning(config.swap, config.device)
    if warning:
        print(warning, file=sys.stderr)
    kwargs = {"resume": args.resume, "progress": cli_progress(args.no_progress) == "bar",
              "memory_budget": budget}
    try:
        with stop_signals(enabled=int(os.environ.get("WORLD_SIZE", "1")) == 1):
            if args.fold == "all":
                result = train_all_folds(config, **kwargs)
            else:
                result = train(config, **kwargs)
    except Interrupted as exc:
        print(f"swapseg: {exc}; continue with: {resume_command(args.out, args.fold == 'all')}",
              file=sys.stderr)
        return exc.exit_status
    print(f"done: {result['run_dir']} ({result.get('stop_reason', 'all folds')}); "
          f"checkpoints in {result['run_dir']}/checkpoints" if "stop_reason" in result
          else f"done: {result['run_dir']}/crossval.json")
    return 0
