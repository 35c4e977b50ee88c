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
from swapseg.cli.grammar import parse_bytes
from swapseg.errors import InputError

__all__ = ["register", "run", "parse_bytes", "config_from_args", "resume_command",
           "RESUME_FLAGS"]

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

With --resume the run's config.json decides; only --epochs, --time-limit, --device and
--data (the data set moved) apply, other flags are ignored with a note. A folder that
holds a run is never overwritten without --overwrite. SIGTERM or Ctrl-C stop after the
current step with a checkpoint written (exit 143 or 130).
"""

def register(subparsers: Any) -> None:
    from swapseg.training.config import PRESETS

    p = g.add_command(
        subparsers, "train", "train the 3D U-Net (full volumes or patches, k-fold)",
        "Train the Isensee 2017 3D U-Net with the reference protocol (Adam 5e-4, "
        "LR x0.5 after 10 epochs without validation improvement, early stop "
        "after 50), optionally with activation swapping.",
        EPILOG + "\npresets, as the flags each one sets (a flag given overrides its value):\n"
        + "".join(textwrap.fill(flags, 92, initial_indent=f"  {name:12s}",
                                subsequent_indent=" " * 14) + "\n"
                  for name, flags in preset_flags().items()))
    p.add_argument("--data", help="data set root (BraTS 2017-2023 or MSD layout)")
    p.add_argument("--out", type=g.output_dir, required=True, help="run directory")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="starting configuration (default brats_full; see below)")
    p.add_argument("--mode", choices=["full", "patch"], help="whole volumes or patches")
    p.add_argument("--shape", type=g.spatial_shape,
                   help="volume shape after preprocessing: N or DxHxW")
    p.add_argument("--zoom", type=g.integer(1), help="integer down-sampling after the crop")
    p.add_argument("--patch", type=g.integer(1), help="patch side in patch mode (default 128)")
    p.add_argument("--patches-per-volume", type=g.integer(1), dest="patches_per_volume",
                   metavar="N", help="patches drawn per training volume and epoch (default 1)")
    p.add_argument("--tumor-fraction", type=g.number(0, 1), dest="tumor_fraction", metavar="F",
                   help="share of patches centred on tumor (default 0: uniform)")
    p.add_argument("--batch", type=g.integer(1), dest="batch_size", metavar="N",
                   help="batch size (default 1 full, 2 patch)")
    p.add_argument("--epochs", type=g.integer(1), dest="max_epochs", metavar="N",
                   help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--early-stop", type=g.integer(1), dest="early_stop", metavar="N",
                   help="epochs without validation improvement before stopping (default 50)")
    p.add_argument("--lr-patience", type=g.integer(0), dest="lr_patience", metavar="N",
                   help="epochs without improvement before the LR halves (default 10)")
    p.add_argument("--time-limit", type=float, dest="max_train_s", metavar="SECONDS",
                   help="stop after the epoch that passes this much training time")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4)")
    p.add_argument("--dropout", type=g.number(0, 1, high_open=True),
                   help="dropout rate (default 0.3)")
    p.add_argument("--loss", choices=["dice", "dice_bce"], help="default: soft Dice")
    p.add_argument("--base-filters", type=g.integer(1), dest="base_filters", metavar="N",
                   help="U-Net filters of the first level (default 16)")
    p.add_argument("--depth", type=g.integer(2), help="U-Net levels (default 5)")
    p.add_argument("--folds", type=g.integer(3), help="cross-validation folds (default 5)")
    p.add_argument("--fold", default=None, help="fold index K (0-based) or 'all'")
    p.add_argument("--seed", type=int, help="split, weights, sampling (default 0)")
    p.add_argument("--workers", type=g.integer(0), help="DataLoader workers")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-augment", action="store_true", help="no flips/permutations")
    p.add_argument("--cache-dir", type=g.output_dir, dest="cache_dir", metavar="DIR",
                   help="cache of preprocessed volumes (default OUT/cache); runs may share one")
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
    from swapseg.offload.policy import SwapPolicy
    from swapseg.training.config import PRESETS, TrainConfig

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
    from swapseg.training.precision import PRECISIONS

    p.add_argument("--precision", type=g.precision, choices=PRECISIONS,
                   help="32 (default), bf16-mixed (bfloat16 autocast) or 16-mixed (float16 "
                        "autocast with a GradScaler); Lightning's names")
    if compile_flag:
        p.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the model for training (the first steps compile)")


def _add_swap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("activation swapping")
    g.add_argument("--swap",
                   help="none, all, auto (with --memory-budget: planned once into "
                        "OUT/plan.json) or a JSON file: a SwapPolicy, or the MemoryPlan that "
                        "`swapseg plan --out` writes (default: the preset's, none except "
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
                   help="where swapped bytes go (auto: cuda on a GPU, host otherwise)")
    g.add_argument("--swap-disk-dir", dest="disk_dir", metavar="DIR",
                   help="folder of the disk tier (default: a fresh temporary one)")
    g.add_argument("--memory-budget", dest="memory_budget_bytes", metavar="SIZE",
                   help="with --swap auto: bytes the step must fit in (e.g. 16GiB)")
    g.add_argument("--trace-step", type=int, dest="trace_step", metavar="N",
                   help="write OUT/timeline.png and timeline.json for this global step")


_POLICY_FIELDS = ("n_tensors", "include", "exclude", "min_bytes", "prefetch",
                  "swap_branches", "tier", "disk_dir")


def _swap_plan(args: argparse.Namespace, preset: Any) -> Any:
    """The MemoryPlan the flags describe (None: none, or auto, resolved by train), starting
    from the preset's plan ``preset``. ``--swap FILE`` reads a SwapPolicy or a MemoryPlan
    JSON (``swapseg plan --out`` writes memory_plan.json); ``--swap-*`` flags change the
    plan's swap policy."""
    from swapseg.offload.policy import MemoryPlan, SwapPolicy
    from swapseg.training.planning import read_plan_file

    if args.swap is None:
        args.swap = "none" if preset is None else "preset"
    flags = {f: getattr(args, f) for f in _POLICY_FIELDS if getattr(args, f) is not None}
    if args.swap == "auto":
        if args.memory_budget_bytes is None:
            raise InputError("--swap auto needs --memory-budget (e.g. 16GiB)")
        if flags:
            raise InputError("--swap auto chooses the plan; drop "
                             f"{_OTHER_FLAGS[next(iter(flags))]}")
        return None
    if args.memory_budget_bytes is not None:
        raise InputError("--memory-budget is only used with --swap auto")
    if args.swap == "none":
        if flags:
            raise InputError(f"{_OTHER_FLAGS[next(iter(flags))]} needs --swap all "
                             "or --swap FILE.json")
        return None
    if args.swap == "all":
        base = MemoryPlan(swap=SwapPolicy(), name="swap-all")
    elif args.swap == "preset":
        base = preset
    else:
        path = Path(args.swap)
        if not path.is_file():
            raise InputError(f"--swap {args.swap}: not none, all, auto or an existing JSON file")
        base = read_plan_file(path, f"--swap {args.swap}")
    if not flags:
        return base
    if base.swap is None:
        raise InputError(f"{_OTHER_FLAGS[next(iter(flags))]}: the plan in --swap {args.swap} "
                         "swaps nothing")
    return base.replace(swap=base.swap.replace(**flags))


#: Flags that apply with --resume (safe: they change when the run stops, where it runs or
#: where its data now lives, not what an epoch computes), by config field.
RESUME_FLAGS = {"max_epochs": "--epochs", "max_train_s": "--time-limit", "device": "--device",
                "data": "--data"}
_OTHER_FLAGS = {"preset": "--preset", "mode": "--mode", "shape": "--shape", "zoom": "--zoom",
                "patch": "--patch", "patches_per_volume": "--patches-per-volume",
                "tumor_fraction": "--tumor-fraction", "batch_size": "--batch", "lr": "--lr",
                "loss": "--loss", "dropout": "--dropout", "early_stop": "--early-stop",
                "lr_patience": "--lr-patience", "base_filters": "--base-filters",
                "depth": "--depth",
                "folds": "--folds", "seed": "--seed", "workers": "--workers",
                "cache_dir": "--cache-dir", "swap": "--swap", "trace_step": "--trace-step",
                "memory_budget_bytes": "--memory-budget", **{f: f"--swap-{f}".replace("_", "-")
                                                              for f in ("n_tensors", "include",
                                                                        "exclude", "min_bytes",
                                                                        "prefetch", "tier",
                                                                        "disk_dir")},
                "swap_branches": "--swap-branches"}

#: Every config field a flag sets, by field (config checks name fields; errors name flags).
FLAGS = {**RESUME_FLAGS, **_OTHER_FLAGS, "batch": "--batch", "fold": "--fold",
         "precision": "--precision"}


def _resumed_config(args: argparse.Namespace, saved: Path) -> Any:
    """The run's own config, with absolute paths and the flags that apply on resume."""
    from swapseg.training.config import TrainConfig
    from swapseg.training.rundir import absolute_paths

    try:
        d = absolute_paths(json.loads(saved.read_text()), args.out)
    except json.JSONDecodeError as exc:
        raise InputError(f"{saved}: not valid JSON ({exc})") from None
    given = {f: getattr(args, f) for f in RESUME_FLAGS if getattr(args, f) is not None}
    if "data" in given:
        given["data"] = os.path.abspath(given["data"])
    ignored = [flag for f, flag in _OTHER_FLAGS.items() if getattr(args, f) is not None]
    if args.no_augment:
        ignored.append("--no-augment")
    if args.fold not in (None, "all"):
        ignored.append("--fold")
    if ignored:
        print(f"swapseg: --resume continues the run as {saved} says: ignoring "
              f"{', '.join(ignored)} (only {', '.join(RESUME_FLAGS.values())} apply)",
              file=sys.stderr)
    d.update(given)
    if not Path(d["data"]).is_dir():
        raise InputError(f"{saved}: data folder {d['data']} not found; give --data DIR "
                         "with --resume")
    return TrainConfig.from_dict(d)


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig that the command line describes (or the run's own, with --resume)."""
    from swapseg.training.config import PRESETS

    saved = Path(args.out) / "config.json"
    if args.resume and args.overwrite:
        raise InputError("--resume continues the run in --out, --overwrite replaces it: "
                         "give one of them")
    if args.resume and saved.is_file():
        return _resumed_config(args, saved)
    if not args.data:
        raise InputError("--data DIR is required (except with --resume of an existing run)")
    names = ("mode", "shape", "zoom", "patch", "batch_size", "max_epochs", "lr", "loss",
             "base_filters", "depth", "folds", "seed", "workers", "device", "trace_step",
             "max_train_s", "patches_per_volume", "tumor_fraction", "dropout", "early_stop",
             "lr_patience", "precision", "compile")
    changes = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.fold not in (None, "all"):
        try:
            changes["fold"] = int(args.fold)
        except ValueError:
            raise InputError(f"--fold {args.fold!r}: expected an integer or 'all'") from None
    if args.no_augment:
        changes["augment"] = False
    if args.cache_dir is not None:
        changes["cache_dir"] = os.path.abspath(args.cache_dir)
    preset = PRESETS[args.preset or "brats_full"]
    with g.fields_as_flags(FLAGS):
        # the preset's plan on this run's device (the demo's swaps to disk on a CPU)
        on = {"device": changes["device"]} if "device" in changes else {}
        changes["plan"] = _swap_plan(args, preset(**on).plan)
        # absolute, so that --resume works from any directory
        return preset(data=os.path.abspath(args.data), out=os.path.abspath(args.out),
                      **changes)


def memory_budget(args: argparse.Namespace) -> int | None:
    """``--memory-budget`` in bytes for ``--swap auto`` (None otherwise, and on --resume:
    the run's config.json holds the plan already chosen)."""
    if args.resume or args.memory_budget_bytes is None or args.swap != "auto":
        return None
    return parse_bytes(args.memory_budget_bytes, "--memory-budget")


def _claim_out(args: argparse.Namespace) -> None:
    """Refuse to train over a run without --resume or --overwrite; clear it on --overwrite."""
    from swapseg.training.rundir import clear_run, holds_run

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


def _what(config: Any, args: argparse.Namespace) -> str:
    """One line saying what trains, so that a preset's shape is never a surprise."""
    unit = f"{config.patch}^3 patches of " if config.mode == "patch" else ""
    if args.swap == "auto" and not args.resume:
        swap = "memory plan chosen by --swap auto"
    else:
        swap = "no memory plan" if config.plan is None else \
            f"memory plan {config.plan.name or 'given'}"
    return (f"train: {'resumed run' if args.resume else 'preset ' + (args.preset or 'brats_full')}"
            f": {unit}{'x'.join(map(str, config.shape))} volumes (zoom {config.zoom}), "
            f"U-Net base {config.base_filters} depth {config.depth}, up to {config.max_epochs} "
            f"epochs, {swap}, precision {config.precision}, device {config.device}")


def host_tier_warning(policy: Any, device: str) -> str | None:
    """The one warning line for host-tier swapping on a CPU, where it frees nothing."""
    from swapseg.devices import resolve_device

    if policy is None or policy.tier not in ("host", "auto") or policy.n_tensors == 0 \
            or resolve_device(device).type != "cpu":
        return None
    return ("swapseg: warning: host-tier swapping on a CPU saves no memory (device and host "
            "memory are the same RAM) and only costs time; use --swap-tier disk, "
            "recomputation, or --swap auto --memory-budget SIZE")


def run(args: argparse.Namespace) -> int:
    from swapseg.progress import cli_progress  # the bar on a terminal; epoch lines always
    from swapseg.training.interrupt import Interrupted, stop_signals
    from swapseg.training.loop import NonFiniteLoss, train, train_all_folds

    config = config_from_args(args)
    budget = memory_budget(args)  # a bad size fails before --overwrite clears anything
    _claim_out(args)
    print(_what(config, args))
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
    except NonFiniteLoss as exc:
        print(f"swapseg: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"swapseg: {exc}; continue with: {resume_command(args.out, args.fold == 'all')}",
              file=sys.stderr)
        return exc.exit_status
    print(f"done: {result['run_dir']} ({result.get('stop_reason', 'all folds')}); "
          f"checkpoints in {result['run_dir']}/checkpoints" if "stop_reason" in result
          else f"done: {result['run_dir']}/crossval.json")
    return 0
