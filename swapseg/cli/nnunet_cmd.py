"""``swapseg nnunet``: nnU-Net v2 with swapping (trainers folder, train, a synthetic dataset)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from swapseg.cli import grammar as g
from swapseg.errors import InputError

__all__ = ["register", "run"]

EPILOG = """examples:
  export nnUNet_raw=$PWD/nnUNet_raw nnUNet_preprocessed=$PWD/nnUNet_preprocessed \\
         nnUNet_results=$PWD/nnUNet_results
  export nnUNet_extTrainer=$(swapseg nnunet trainers)
  swapseg nnunet synth 501 --cases 6 --shape 40x36x32
  nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres -np 1
  swapseg nnunet train 501 3d_fullres 0 -tr nnUNetTrainerSwap_debug --device cpu
  SWAPSEG_MEMORY_BUDGET=12GiB nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerSwap  # GPU
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
    s = g.add_command(sub, "synth", "write a BraTS-like dataset in nnU-Net's raw format")
    s.add_argument("dataset_id", type=g.integer(1), help="nnU-Net dataset ID (1-999)")
    s.add_argument("--cases", type=g.integer(1), default=6, help="number of cases (default 6)")
    s.add_argument("--shape", type=g.spatial_shape, default=(40, 36, 32),
                   help="N or DxHxW (default 40x36x32)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--raw", type=g.output_dir, help="nnUNet_raw folder (default: $nnUNet_raw)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.nnunet_command == "trainers":
        from swapseg.integrations.nnunet import trainers_folder
        print(trainers_folder())
        return 0
    if args.nnunet_command == "synth":
        from swapseg.integrations.nnunet.dataset import write_raw_dataset
        raw = args.raw or os.environ.get("nnUNet_raw")
        if not raw:
            raise InputError("set nnUNet_raw or pass --raw")
        print(write_raw_dataset(raw, args.dataset_id, args.cases, args.shape, args.seed))
        return 0
    return _train(args)


def _trainer_class(name: str) -> type:
    from swapseg.integrations.nnunet import TRAINER_NAMES
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
    try:
        import torch
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
    device = torch.device(args.device)
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
