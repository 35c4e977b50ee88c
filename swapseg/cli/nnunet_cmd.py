"""``swapseg nnunet``: nnU-Net v2 with swapping (trainers folder, train, a synthetic dataset)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from swapseg.cli import grammar as g
from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.integrations.nnunet import TRAINER_NAMES, trainers_folder
from swapseg.integrations.nnunet.dataset import write_raw_dataset
from swapseg.io import write_json
from swapseg.planner.profiles import PROFILES

__all__ = ["register", "run"]

EPILOG = """examples:
  export nnUNet_raw=$PWD/nnUNet_raw nnUNet_preprocessed=$PWD/nnUNet_preprocessed \\
         nnUNet_results=$PWD/nnUNet_results
  export nnUNet_extTrainer=$(swapseg nnunet trainers)
  swapseg nnunet synth 501 --cases 6 --shape 40x36x32
  swapseg nnunet plan 501 -c 3d_fullres --gpu-memory 0.05GiB        # dry run: the table
  swapseg nnunet plan-experiment 501 -gpu_memory_target 0.05        # nnUNetPlansSwap.json
  nnUNetv2_preprocess -d 501 -plans_name nnUNetPlansSwap -c 3d_fullres -np 1
  swapseg nnunet train 501 3d_fullres 0 -p nnUNetPlansSwap -tr nnUNetTrainerSwap_debug \
      --device cpu
  nnUNetv2_train 501 3d_fullres 0 -p nnUNetPlansSwap -tr nnUNetTrainerSwap  # on a GPU
"""


def register(subparsers: Any) -> None:
    p = g.add_command(
        subparsers, "nnunet", "train nnU-Net v2 with swapping",
        "nnU-Net v2 trainers whose steps run under swapseg's memory plan (needs pip install "
        "'swapseg[nnunet]').", EPILOG)
    sub = g.add_action(p, "nnunet_command")
    g.add_command(sub, "trainers", "print the folder for nnUNet_extTrainer").set_defaults(
        func=run)
    tr = g.add_command(
        sub, "train", "train like nnUNetv2_train, without its import of every trainer",
        "Build the trainer as nnU-Net's run_training does after its class lookup "
        "(nnUNetv2_train imports every trainer module, one of which needs torchvision, "
        "which a CPU-only torch cannot load), train, then validate.")
    tr.add_argument("dataset", help="dataset ID or DatasetXXX_Name")
    tr.add_argument("configuration", help="e.g. 3d_fullres")
    tr.add_argument("fold", help="0-4 or all")
    tr.add_argument("-tr", dest="trainer", default="nnUNetTrainerSwap", help="trainer class")
    tr.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    tr.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    tr.add_argument("--c", dest="resume", action="store_true",
                    help="continue from the fold's latest checkpoint")
    tr.add_argument("--npz", action="store_true", help="also save validation probabilities")
    tr.set_defaults(func=run)
    _register_planning(sub)
    _register_predict(sub)
    s = g.add_command(sub, "synth", "write a BraTS-like dataset in nnU-Net's raw format")
    s.add_argument("dataset_id", type=g.integer(1), help="nnU-Net dataset ID (1-999)")
    s.add_argument("--cases", type=g.integer(1), default=6, help="number of cases (default 6)")
    s.add_argument("--shape", type=g.spatial_shape, default=(40, 36, 32),
                   help="N or DxHxW (default 40x36x32)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--raw", type=g.output_dir, help="nnUNet_raw folder (default: $nnUNet_raw)")
    s.set_defaults(func=run)


def _planner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset ID or DatasetXXX_Name (raw data in $nnUNet_raw)")
    p.add_argument("-pl", dest="planner", default="nnUNetPlannerSwap",
                   choices=("nnUNetPlannerSwap", "nnUNetPlannerResEncMSwap",
                            "nnUNetPlannerResEncLSwap", "nnUNetPlannerResEncXLSwap"),
                   help="swap planner (default nnUNetPlannerSwap)")
    p.add_argument("--profile", default="a100-pcie4", choices=(*PROFILES, "local"),
                   help="device profile the planner predicts for (default a100-pcie4)")
    p.add_argument("--max-slowdown", type=g.number(0, 10, high_open=True), default=0.15,
                   help="largest predicted slowdown from swapping (default 0.15, i.e. 15%%)")
    p.add_argument("--max-patch", type=g.spatial_shape, default=None,
                   help="cap on the patch, DxHxW (default: the median image)")


def _register_planning(sub: Any) -> None:
    pe = g.add_command(
        sub, "plan-experiment", "nnU-Net plans whose patch is sized with swapping",
        "nnU-Net's plan_experiment_dataset with a swap planner: the 3d_fullres patch is the "
        "largest of nnU-Net's patch chain, from the whole median image down, that swapseg's "
        "planner fits into the memory target within the slowdown bound; plans go to "
        "$nnUNet_preprocessed/DatasetXXX/nnUNetPlansSwap*.json with the swap plan.")
    _planner_options(pe)
    pe.add_argument("-gpu_memory_target", type=g.number(0, 10_000), default=None,
                    help="GPU memory in GB (nnU-Net's meaning; default: the planner's)")
    pe.add_argument("-overwrite_plans_name", dest="plans_name", default=None,
                    help="plans identifier (default nnUNetPlansSwap or the preset's)")
    pe.set_defaults(func=run)
    pl = g.add_command(
        sub, "plan", "dry run: nnU-Net's patch and batch against swapping's, as a table",
        "Plan the configuration as plan-experiment does, write nothing but the table's "
        "JSON: nnU-Net's default patch and batch, the same swapped, the swap planner's "
        "patch and the whole median image, each with the predicted peak (beside nnU-Net's "
        "own estimate), step time and slowdown.")
    _planner_options(pl)
    pl.add_argument("-c", dest="configuration", default="3d_fullres",
                    help="configuration (default 3d_fullres)")
    pl.add_argument("--gpu-memory", type=g.byte_size, default=None,
                    help="GPU memory, e.g. 12GiB (default: the planner's target)")
    pl.add_argument("--json", type=g.output_path, default="swapseg_nnunet_plan.json",
                    help="where the table's JSON goes (default swapseg_nnunet_plan.json)")
    pl.set_defaults(func=run)


def _register_predict(sub: Any) -> None:
    pr = g.add_command(
        sub, "predict", "predict like nnUNetv2_predict, without its import of every trainer",
        "nnU-Net's nnUNetPredictor with the checkpoint's trainer resolved directly "
        "(nnUNetv2_predict imports every trainer module, one of which needs torchvision). "
        "The patch, sliding window and export are the plans' and nnU-Net's.")
    pr.add_argument("-i", dest="input", required=True, help="folder of raw images (_0000...)")
    pr.add_argument("-o", dest="output", required=True, type=g.output_dir,
                    help="folder for the segmentations")
    pr.add_argument("-d", dest="dataset", required=True, help="dataset ID or DatasetXXX_Name")
    pr.add_argument("-c", dest="configuration", required=True, help="e.g. 3d_fullres")
    pr.add_argument("-f", dest="folds", nargs="+", default=["0"], help="folds (default 0)")
    pr.add_argument("-tr", dest="trainer", default="nnUNetTrainerSwap", help="trainer class")
    pr.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    pr.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth")
    pr.add_argument("-step_size", type=g.number(0, 1), default=0.5,
                    help="sliding-window step as a fraction of the patch (default 0.5)")
    pr.add_argument("--disable_tta", action="store_true", help="no mirroring")
    pr.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    pr.set_defaults(func=run)


def _predict(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if not os.path.isdir(args.input):
        raise InputError(f"{args.input}: no such folder of images")
    if not os.environ.get("nnUNet_results"):
        raise InputError("set nnUNet_results (see nnU-Net's docs)")
    from swapseg.integrations.nnunet import experiment, predict
    did = experiment.dataset_id(args.dataset)
    folder = predict.model_folder(did, args.trainer, args.plans, args.configuration)
    folds = [f if f == "all" else _fold(f) for f in args.folds]
    predict.predict(args.input, args.output, folder, folds, _trainer_class, device,
                    args.checkpoint, args.step_size, not args.disable_tta)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from swapseg.integrations.nnunet import experiment as ex
    common = {"planner": args.planner, "profile": args.profile,
              "max_slowdown": args.max_slowdown, "max_patch": args.max_patch}
    if args.nnunet_command == "plan-experiment":
        _, ident = ex.plan_experiment(args.dataset, gpu_memory_gb=args.gpu_memory_target,
                                      plans_name=args.plans_name, **common)
        print(f"plans identifier: {ident} (nnUNetv2_preprocess -plans_name {ident}; "
              f"nnUNetv2_train -p {ident})")
        return 0
    gb = None if args.gpu_memory is None else args.gpu_memory / 2**30
    record = ex.dry_run(args.dataset, args.configuration, gpu_memory_gb=gb, **common)
    print(ex.format_table(record))
    write_json(args.json, record)
    print(f"table written to {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.nnunet_command in ("plan", "plan-experiment"):
        return _plan(args)
    if args.nnunet_command == "predict":
        return _predict(args)
    if args.nnunet_command == "trainers":
        print(trainers_folder())
        return 0
    if args.nnunet_command == "synth":
        raw = args.raw or os.environ.get("nnUNet_raw")
        if not raw:
            raise InputError("set nnUNet_raw or pass --raw")
        print(write_raw_dataset(raw, args.dataset_id, args.cases, args.shape, args.seed))
        return 0
    return _train(args)


def _trainer_class(name: str) -> type:
    if name in TRAINER_NAMES:
        from swapseg.integrations.nnunet import trainer
        return getattr(trainer, name)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise InputError(f"no nnU-Net trainer named {name!r}") from None
    except ImportError as exc:  # the lookup imports every trainer module; some need torchvision
        raise InputError(f"-tr {name}: not one of swapseg's trainers ({', '.join(TRAINER_NAMES)}),"
                         f" and nnU-Net's own could not be searched ({exc})") from None


def _train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    try:
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.run.run_training import maybe_load_checkpoint
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    except ImportError as exc:
        raise InputError(f"nnU-Net is not installed ({exc}); pip install 'swapseg[nnunet]'") \
            from None
    pre = os.environ.get("nnUNet_preprocessed")
    if not pre or not os.environ.get("nnUNet_results"):
        raise InputError("set nnUNet_preprocessed and nnUNet_results (see nnU-Net's docs)")
    fold: int | str = args.fold if args.fold == "all" else _fold(args.fold)
    dataset = args.dataset if args.dataset.startswith("Dataset") else _dataset_id(args.dataset)
    try:
        base = Path(pre) / maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise InputError(f"dataset {args.dataset} is not in {pre} (preprocessed)") from None
    plans_file = base / f"{args.plans}.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file}: no such plans (run nnUNetv2_plan_and_preprocess)")
    plans = load_json(str(plans_file))
    if args.configuration not in plans.get("configurations", {}):
        raise InputError(f"{plans_file}: no configuration {args.configuration!r}")
    plans["continue_training"] = args.resume
    cls = _trainer_class(args.trainer)
    trainer = cls(plans=plans, configuration=args.configuration, fold=fold,
                  dataset_json=load_json(str(base / "dataset.json")), device=device)
    maybe_load_checkpoint(trainer, args.resume, False, None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer.run_training()
    trainer.perform_actual_validation(args.npz)
    return 0


def _fold(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"fold must be an integer or 'all', got {text!r}") from None


def _dataset_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"dataset must be an ID or DatasetXXX_Name, got {text!r}") from None
