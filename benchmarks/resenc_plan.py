"""Predicted: nnU-Net's ResEnc L on whole BraTS images in a 12 GiB budget (issue 12).

nnU-Net's own ``nnUNetPlannerResEncL`` (24 GB VRAM target) plans a BraTS-shaped dataset:
its fingerprint is the geometry of the real BraTS 2018 sample (each case's non-zero
bounding box, as nnU-Net crops, at the images' spacing; intensities do not shape the
network). ``nnUNetTrainerSwapFullImage`` then builds that network (from
dynamic_network_architectures, as installed) at the median image shape rounded to its
divisor, with nnU-Net's deep-supervision region loss, and swapseg's planner chooses the
fastest plan under the budget on a device profile. Everything is PREDICTED by the planner's
simulator (no GPU ran it); the JSON says so.

    python benchmarks/resenc_plan.py --sample ../shared/data/brats18-sample \
        --out benchmarks/results/resenc-l-brats-12gib.json

``--swap-table PLANNER`` runs swapseg's swap planner (``nnUNetPlannerSwap``,
``nnUNetPlannerResEncLSwap``, ...) on the same fingerprint, or on ``--geometry kits-like``
(an assumed large abdominal CT: one 128 x 512 x 512 case at 1 x 0.78 x 0.78 mm), and prints
the table of ``swapseg nnunet plan`` (also PREDICTED):

    python benchmarks/resenc_plan.py --swap-table nnUNetPlannerResEncLSwap --gpu-memory 12
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from swapseg.integrations._plan import parse_size, plan_search
from swapseg.training.precision import PRECISIONS, autocast_dtype

SAMPLE = Path(os.environ.get("SWAPSEG_BRATS_SAMPLE") or Path(__file__).resolve().parents[2]
              / "shared" / "data" / "brats18-sample")
MODS = ("t1", "t1ce", "t2", "flair")  # nnU-Net's BraTS channel order
DATASET_ID = 990
#: An assumed large abdominal CT (KiTS-like), not KiTS's fingerprint: one case.
KITS_LIKE = ([[128, 512, 512]], [[1.0, 0.78, 0.78]])


def brats_geometry(sample: Path) -> tuple[list[list[int]], list[list[float]]]:
    """Per case, the shape after nnU-Net's crop to non-zero and the spacing, in nnU-Net's
    (SimpleITK) axis order, i.e. nibabel's reversed."""
    shapes, spacings = [], []
    for case in sorted(p for p in sample.iterdir() if p.is_dir()):
        imgs = [nib.load(str(case / f"{case.name}_{m}.nii.gz")) for m in MODS]
        nonzero = np.any([np.asarray(i.dataobj) != 0 for i in imgs], axis=0)  # (X, Y, Z)
        idx = np.nonzero(nonzero)
        box = [int(a.max() - a.min() + 1) for a in idx]
        shapes.append(box[::-1])
        spacings.append([float(s) for s in imgs[0].header.get_zooms()[:3]][::-1])
    if not shapes:
        raise SystemExit(f"no cases in {sample}")
    return shapes, spacings


def write_dataset(root: Path, shapes: list[list[int]], spacings: list[list[float]]) -> None:
    """The raw dataset.json, one tiny image (nnU-Net reads one to pick its reader) and the
    fingerprint nnU-Net's planner plans from."""
    name = f"Dataset{DATASET_ID}_BraTSGeometry"
    raw, pre = root / "raw" / name, root / "preprocessed" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    tiny = np.zeros((8, 8, 8), np.float32)
    for ch in range(4):
        nib.save(nib.Nifti1Image(tiny, np.eye(4)), str(raw / "imagesTr" / f"c_{ch:04d}.nii.gz"))
    nib.save(nib.Nifti1Image(tiny.astype(np.uint8), np.eye(4)), str(raw / "labelsTr" / "c.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                   "enhancing tumor": 3},
        "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}))
    intensity = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0,
                 "percentile_00_5": 0.0, "percentile_99_5": 1.0, "std": 1.0}
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": spacings, "shapes_after_crop": shapes,
        "foreground_intensity_properties_per_channel": {str(c): intensity for c in range(4)},
        "median_relative_size_after_cropping": 1.0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--budget", default="12GiB")
    ap.add_argument("--device", default="a100-pcie4", help="planner device profile")
    ap.add_argument("--batch", type=int, help="batch size (default: ResEnc L's plan)")
    ap.add_argument("--precision", default="32", choices=PRECISIONS,
                    help="trace under this autocast (nnU-Net trains 16-mixed on a GPU)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--swap-table", metavar="PLANNER",
                    help="print the swap planner's table instead (e.g. nnUNetPlannerSwap)")
    ap.add_argument("--geometry", choices=("brats", "kits-like"), default="brats")
    ap.add_argument("--gpu-memory", type=float, default=12.0, help="GiB (--swap-table)")
    args = ap.parse_args()
    budget = parse_size(args.budget, "--budget")
    shapes, spacings = brats_geometry(args.sample) if args.geometry == "brats" else KITS_LIKE
    if args.swap_table:
        return swap_table_main(args, shapes, spacings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in ("raw", "preprocessed", "results"):
            os.environ[f"nnUNet_{k}"] = str(root / k)
        write_dataset(root, shapes, spacings)
        result = plan_resenc(root, budget, args.device, args.batch, args.precision)
    result["fingerprint"] = {"cases": len(shapes), "source": str(args.sample),
                             "shapes_after_crop": shapes}
    text = json.dumps(result, indent=2)
    print(summary(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def swap_table_main(args: argparse.Namespace, shapes: list, spacings: list) -> None:
    from swapseg.integrations.nnunet.experiment import format_table
    from swapseg.integrations.nnunet.planner import PLANNERS

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in ("raw", "preprocessed", "results"):
            os.environ[f"nnUNet_{k}"] = str(root / k)
        write_dataset(root, shapes, spacings)
        planner = PLANNERS[args.swap_table](DATASET_ID, gpu_memory_target_in_gb=args.gpu_memory,
                                            device_profile=args.device)
        planner.save_plans = lambda plans: None  # planned only
        conf = planner.plan_experiment()["configurations"]["3d_fullres"]
    record = {"predicted": True, "geometry": args.geometry, "dataset": args.geometry,
              "configuration": "3d_fullres", "shapes_after_crop": shapes,
              "spacings": spacings, **conf["swapseg"]}
    print(format_table(record))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


def summary(r: dict) -> str:
    head = (f"PREDICTED {r['network'].rsplit('.', 1)[-1]} input {r['input_shape']} "
            f"precision {r.get('precision', '32')} "
            f"budget {r['budget_bytes'] / 2**30:.1f} GiB on {r['device_profile']}: keep-all "
            f"peak {r['keep_all']['peak_bytes'] / 2**30:.2f} GiB")
    c = r["chosen"]
    if c is None:
        return f"{head}; no plan fits: {r['missing_bytes']} bytes missing"
    return (f"{head}; chosen {c['name']}: peak {c['peak_bytes'] / 2**30:.2f} GiB, step "
            f"{c['step_s']:.3f} s vs {r['keep_all']['step_s']:.3f} s keep-all "
            f"(x{c['step_s'] / r['keep_all']['step_s']:.3f})")


def plan_resenc(root: Path, budget: int, device: str, batch: int | None,
                precision: str = "32") -> dict:
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.\
        residual_encoder_unet_planners import nnUNetPlannerResEncL

    from swapseg.integrations.nnunet.trainer import nnUNetTrainerSwapFullImage

    planner = nnUNetPlannerResEncL(DATASET_ID)
    plans = planner.plan_experiment()
    conf = plans["configurations"]["3d_fullres"]
    data = root / "preprocessed" / plans["dataset_name"] / conf["data_identifier"]
    data.mkdir(parents=True, exist_ok=True)
    (data / "case.b2nd").touch()  # initialize() infers the dataset class from file endings
    trainer = nnUNetTrainerSwapFullImage(
        plans=plans | {"continue_training": False}, configuration="3d_fullres", fold=0,
        dataset_json=planner.dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    if batch:
        trainer.batch_size = batch
    shape = trainer.swap_input_shape()
    res = plan_search(trainer._planning_network(), shape, device, budget_bytes=budget,
                      loss_fn=trainer._trace_loss, autocast_dtype=autocast_dtype(precision),
                      require_fit=False)
    d = res.search.as_dict()
    return {"predicted": True,
            "what": "swapseg planner prediction (simulator on a device profile); no GPU run",
            "precision": precision,
            "network": conf["architecture"]["network_class_name"],
            "arch_kwargs": conf["architecture"]["arch_kwargs"],
            "nnunet_patch_size": conf["patch_size"], "nnunet_batch_size": conf["batch_size"],
            "median_image_size_in_voxels": conf["median_image_size_in_voxels"],
            "input_shape": list(shape), "budget_bytes": budget, "device_profile": device,
            "chosen": d["chosen"], "keep_all": d["candidates"][0],
            "usable_bytes": d["usable_bytes"], "candidates": d["candidates"],
            "missing_bytes": None if d["chosen"] else
            int(min(c["peak_bytes"] for c in d["candidates"]) - d["usable_bytes"]),
            "trace": d["trace"]}


if __name__ == "__main__":
    main()
