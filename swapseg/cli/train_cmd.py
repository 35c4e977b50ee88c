"""``swapseg train``: train the Isensee U-Net on a BraTS-style data set (one fold or all)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from swapseg.cli.grammar import parse_bytes, parse_shape
from swapseg.errors import InputError

__all__ = ["register", "run", "parse_bytes", "config_from_args"]

EPILOG = """examples:
  swapseg train --data brats18/ --out runs/full                     # 192^3, the paper's arm
  swapseg train --data brats18/ --out runs/cpu --shape 64 --zoom 3  # real cases on a CPU
  swapseg train --data brats18/ --out runs/patch --mode patch --patch 128 --fold all
  swapseg train --data synth/ --out runs/tiny --preset tiny --epochs 5 --swap all
  swapseg train --data synth/ --out runs/tuned --swap all --swap-exclude 'decoder.*' \\
      --swap-prefetch 20 --trace-step 3
  swapseg train --data brats18/ --out runs/auto --swap auto --memory-budget 16GiB
  swapseg train --out runs/full --resume          # continue after a crash or a kill
"""

def _shape(text: str) -> tuple[int, int, int]:
    return parse_shape(text, channels=False).spatial  # type: ignore[return-value]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train the 3D U-Net (full volumes or patches, k-fold)",
        description="Train the Isensee 2017 3D U-Net with the reference protocol (Adam 5e-4, "
                    "LR x0.5 after 10 epochs without validation improvement, early stop "
                    "after 50), optionally with activation swapping.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data set root (BraTS 2017-2023 or MSD layout)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="brats_full",
                   choices=["brats_full", "brats_patch", "demo", "tiny"],
                   help="starting configuration (default brats_full)")
    p.add_argument("--mode", choices=["full", "patch"], help="whole volumes or patches")
    p.add_argument("--shape", help="volume shape after preprocessing: N or DxHxW")
    p.add_argument("--zoom", type=int, help="integer down-sampling after the crop")
    p.add_argument("--patch", type=int, help="patch side in patch mode (default 128)")
    p.add_argument("--patches-per-volume", type=int, dest="patches_per_volume", metavar="N",
                   help="patches drawn per training volume and epoch (default 1)")
    p.add_argument("--tumor-fraction", type=float, dest="tumor_fraction", metavar="F",
                   help="share of patches centred on tumor (default 0: uniform)")
    p.add_argument("--batch", type=int, dest="batch_size", metavar="N",
                   help="batch size (default 1 full, 2 patch)")
    p.add_argument("--epochs", type=int, dest="max_epochs", metavar="N",
                   help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--time-limit", type=float, dest="max_train_s", metavar="SECONDS",
                   help="stop after the epoch that passes this much training time")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4)")
    p.add_argument("--loss", choices=["dice", "dice_bce"], help="default: soft Dice")
    p.add_argument("--base-filters", type=int, dest="base_filters", metavar="N",
                   help="U-Net filters of the first level (default 16)")
    p.add_argument("--depth", type=int, help="U-Net levels (default 5)")
    p.add_argument("--folds", type=int, help="cross-validation folds (default 5)")
    p.add_argument("--fold", default=None, help="fold index K (0-based) or 'all'")
    p.add_argument("--seed", type=int, help="split, weights, sampling (default 0)")
    p.add_argument("--workers", type=int, help="DataLoader workers")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-augment", action="store_true", help="no flips/permutations")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt with OUT/config.json")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    _add_swap_args(p)
    p.set_defaults(func=run)


def _add_swap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("activation swapping")
    g.add_argument("--swap",
                   help="none, all, auto (with --memory-budget) or a SwapPolicy JSON file "
                        "(default: the preset's, which is none except for the demo)")
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


def _swap_policy(args: argparse.Namespace, preset: Any) -> Any:
    """The policy the flags describe, starting from the preset's policy ``preset``."""
    from swapseg.offload.policy import SwapPolicy

    if args.swap is None:
        args.swap = "none" if preset is None else "preset"
    flags = {f: getattr(args, f) for f in _POLICY_FIELDS if getattr(args, f) is not None}
    if args.swap == "auto":
        if args.memory_budget_bytes is None:
            raise InputError("--swap auto needs --memory-budget (e.g. 16GiB)")
        if flags:
            raise InputError(f"--swap auto chooses the policy; drop --swap-{next(iter(flags))}")
        return None
    if args.memory_budget_bytes is not None:
        raise InputError("--memory-budget is only used with --swap auto")
    if args.swap == "none":
        if flags:
            raise InputError(f"--swap-{next(iter(flags)).replace('_', '-')} needs --swap all "
                             "or --swap FILE.json")
        return None
    if args.swap == "all":
        base = SwapPolicy()
    elif args.swap == "preset":
        base = preset
    else:
        path = Path(args.swap)
        if not path.is_file():
            raise InputError(f"--swap {args.swap}: not none, all, auto or an existing JSON file")
        base = SwapPolicy.from_json(path.read_text())
    return base.replace(**flags)


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig that the command line describes (or the run's own, with --resume)."""
    from swapseg.training.config import PRESETS, TrainConfig

    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        try:
            return TrainConfig.from_dict(json.loads(saved.read_text()))
        except json.JSONDecodeError as exc:
            raise InputError(f"{saved}: not valid JSON ({exc})") from None
    if not args.data:
        raise InputError("--data DIR is required (except with --resume of an existing run)")
    names = ("mode", "shape", "zoom", "patch", "batch_size", "max_epochs", "lr", "loss",
             "base_filters", "depth", "folds", "seed", "workers", "device", "trace_step",
             "max_train_s", "patches_per_volume", "tumor_fraction",
             "memory_budget_bytes")
    changes = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    # parsed here, not by argparse, so that bad values become one-line InputErrors
    if "shape" in changes:
        changes["shape"] = _shape(changes["shape"])
    if "memory_budget_bytes" in changes:
        changes["memory_budget_bytes"] = parse_bytes(changes["memory_budget_bytes"])
    if args.fold not in (None, "all"):
        try:
            changes["fold"] = int(args.fold)
        except ValueError:
            raise InputError(f"--fold {args.fold!r}: expected an integer or 'all'") from None
    if args.no_augment:
        changes["augment"] = False
    changes["swap"] = _swap_policy(args, PRESETS[args.preset]().swap)
    return PRESETS[args.preset](data=str(args.data), out=str(args.out), **changes)


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
    from swapseg.training.loop import NonFiniteLoss, train, train_all_folds

    config = config_from_args(args)
    warning = host_tier_warning(config.swap, config.device)
    if warning:
        print(warning, file=sys.stderr)
    kwargs = {"resume": args.resume, "progress": not args.no_progress and sys.stderr.isatty()}
    try:
        if args.fold == "all":
            result = train_all_folds(config, **kwargs)
        else:
            result = train(config, **kwargs)
    except NonFiniteLoss as exc:
        print(f"swapseg: error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {result['run_dir']} ({result.get('stop_reason', 'all folds')}); "
          f"checkpoints in {result['run_dir']}/checkpoints" if "stop_reason" in result
          else f"done: {result['run_dir']}/crossval.json")
    return 0
